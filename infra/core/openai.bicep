// Azure OpenAI account with one chat model deployment. Key-based auth is disabled: callers use
// Entra tokens (scope https://cognitiveservices.azure.com/.default) and need the
// "Cognitive Services OpenAI User" role (see app/rbac.bicep). customSubDomainName is required for
// token auth.
param name string
param location string
param tags object = {}

@description('Deployment name the app passes as AZURE_OPENAI_DEPLOYMENT.')
param deploymentName string
param modelName string
param modelVersion string
@description('Deployment SKU, e.g. GlobalStandard, DataZoneStandard or Standard.')
param skuName string
@description('Capacity in units of 1,000 tokens per minute.')
@minValue(1)
param capacity int
@description('Restore a soft-deleted account with this name instead of failing on the name clash.')
param restore bool = false

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  name: name
  location: location
  tags: tags
  kind: 'OpenAI'
  sku: {
    name: 'S0'
  }
  properties: {
    customSubDomainName: name
    restore: restore
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

resource chatDeployment 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = {
  parent: account
  name: deploymentName
  sku: {
    name: skuName
    capacity: capacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
    versionUpgradeOption: 'OnceNewDefaultVersionAvailable'
  }
}

output id string = account.id
output name string = account.name
output endpoint string = account.properties.endpoint
output deploymentName string = chatDeployment.name
