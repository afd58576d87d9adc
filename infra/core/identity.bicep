// User-assigned managed identity for the function app. It is the only identity the app uses:
// host storage, the deployment package container, Application Insights ingestion and Azure OpenAI.
param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
