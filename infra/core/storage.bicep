// Host storage for the function app (AzureWebJobsStorage), the blob container that Flex Consumption
// deploys the app package from, and the container of resumable chat streams shared by every instance
// (chatstream/blob_stream_store.py). Shared-key access is off: everything goes through Entra ID with
// the app's managed identity.
param name string
param location string
param tags object = {}

@description('Blob container that holds the deployment package (functionAppConfig.deployment.storage).')
param deploymentContainerName string

@description('Blob container of resumable chat streams (CHAT_STREAM_STORE_CONTAINER).')
param streamContainerName string

@description('Days after its last write a stream blob is deleted. The app forgets streams after CHAT_RESUME_TTL_SECONDS; this only sweeps what it left behind (1 day is the smallest unit).')
@minValue(1)
param streamRetentionDays int = 1

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Resumable streams: events, stop requests and reader heartbeats of running chat streams (never a
// request or a credential). Private, and swept by the lifecycle rule below.
resource streamContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: streamContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-chat-streams'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['appendBlob', 'blockBlob']
              prefixMatch: ['${streamContainer.name}/']
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: streamRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output deploymentContainerName string = deploymentContainer.name
output streamContainerName string = streamContainer.name
