// Log Analytics workspace + workspace-based Application Insights. Local (instrumentation key)
// authentication is disabled, so telemetry is only accepted from Entra-authenticated senders that
// hold Monitoring Metrics Publisher on the component (see app/rbac.bicep).
param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object = {}

@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

output applicationInsightsId string = applicationInsights.id
output applicationInsightsName string = applicationInsights.name
// The connection string is not passed through outputs: app/api.bicep reads it from the existing
// component straight into the app setting, so it never lands in deployment outputs or the azd env.
output logAnalyticsName string = logAnalytics.name
