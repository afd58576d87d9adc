// Role assignments for the app's managed identity and (optionally) the developer running azd.
// Role definition ids are Azure built-in roles (checked by tests/test_infra.py against the
// documented ids).
param storageAccountName string
param applicationInsightsName string
param openAiAccountName string

@description('principalId (object id) of the app\'s user-assigned identity.')
param appPrincipalId string

@description('Object id of the developer (azd sets AZURE_PRINCIPAL_ID). Empty: no developer roles.')
param developerPrincipalId string = ''
@allowed(['User', 'ServicePrincipal', 'Group'])
param developerPrincipalType string = 'User'
@description('Also let the developer publish telemetry from `func start` to Application Insights.')
param grantDeveloperMonitoring bool = false

@description('Queue/Table data roles for AzureWebJobsStorage. An HTTP-only app needs only blob; enable for queue/blob triggers, Durable Functions or table-based host diagnostics.')
param grantQueueAndTableRoles bool = false

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  cognitiveServicesOpenAIUser: '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

// Host storage (AzureWebJobsStorage) and the Flex deployment package container.
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantQueueAndTableRoles) {
  name: guid(storage.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantQueueAndTableRoles) {
  name: guid(storage.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Entra-authenticated telemetry ingestion (App Insights local auth is disabled).
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Keyless inference calls to Azure OpenAI.
resource appOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(openAi.id, appPrincipalId, roles.cognitiveServicesOpenAIUser)
  scope: openAi
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.cognitiveServicesOpenAIUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The developer's own Entra login, so `func start` can call the provisioned model without a key.
resource developerOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(developerPrincipalId)) {
  name: guid(openAi.id, developerPrincipalId, roles.cognitiveServicesOpenAIUser)
  scope: openAi
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.cognitiveServicesOpenAIUser)
    principalId: developerPrincipalId
    principalType: developerPrincipalType
  }
}

resource developerMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(developerPrincipalId) && grantDeveloperMonitoring) {
  name: guid(applicationInsights.id, developerPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: developerPrincipalId
    principalType: developerPrincipalType
  }
}

// Role assignments take a while to reach storage (it answers 403 until then). The predeploy hook reads
// this time and waits before the first `azd deploy` uploads the package through the app identity.
output appStorageRoleCreatedOn string = appBlobOwner.properties.createdOn
