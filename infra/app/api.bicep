// Flex Consumption plan (FC1) + Linux Python function app that serves POST /api/chat as SSE.
// All settings the app reads (chatstream/settings.py) are listed in `appSettings` below; the
// settings-contract test in tests/test_infra.py parses this array.
param planName string
param functionAppName string
param location string
param tags object = {}

@description('azd service name; azd deploy finds the app by the azd-service-name tag.')
param serviceName string = 'api'

param identityId string
param identityClientId string
param storageAccountName string
param storageBlobEndpoint string
param deploymentContainerName string
@description('Blob container of resumable chat streams, shared by every instance (CHAT_STREAM_STORE_CONTAINER).')
param streamContainerName string
param applicationInsightsName string

param openAiEndpoint string
param openAiDeployment string
param openAiApiVersion string
@description('Comma-separated deployments that are reasoning models (CHAT_REASONING_DEPLOYMENTS); empty: none.')
param reasoningDeployments string = ''

@allowed(['3.11', '3.12', '3.13'])
param pythonVersion string = '3.12'

@description('Upper bound for scale-out (Flex allows 40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@allowed([512, 2048, 4096])
param instanceMemoryMB int

@description('Concurrent HTTP invocations (= open SSE streams) one instance accepts before Flex adds another.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int

@description('Comma-separated browser origins allowed to call the API.')
param corsAllowedOrigins string

@description('Who answers CORS: the app (CHAT_CORS_ORIGINS) or the platform (siteConfig.cors). Never both.')
@allowed(['app', 'platform'])
param corsHandledBy string

@description('Seconds the app may spend on one stream before it ends it cleanly (below the 230 s front-end limit).')
param chatDeadlineSeconds int
@description('Seconds between SSE keep-alive comments (well below the 230/240 s idle limits).')
param chatHeartbeatSeconds int
@description('Log prompts/answers? Off by default: chat content is user data.')
param chatLogContent bool
param chatLogLevel string

@description('Extra {name, value} app settings appended last (e.g. CHAT_SYSTEM_PROMPT). Never put secrets here.')
param extraAppSettings array = []

var corsOriginList = filter(map(split(corsAllowedOrigins, ','), o => trim(o)), o => !empty(o))

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true // Linux
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Every environment variable the deployed app reads. No FUNCTIONS_WORKER_RUNTIME /
// FUNCTIONS_EXTENSION_VERSION / WEBSITE_RUN_FROM_PACKAGE: Flex takes the runtime from
// functionAppConfig and rejects those settings.
var appSettings = [
  // Host storage through the managed identity (no connection string, no keys).
  { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
  // Application Insights with Entra (local auth is disabled on the component).
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: applicationInsights.properties.ConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
  // Python worker: required for HTTP streaming on Python <= 3.12 (3.13 no longer needs it; harmless there).
  { name: 'PYTHON_ENABLE_INIT_INDEXING', value: '1' }
  // Keyless Azure OpenAI: DefaultAzureCredential picks the user-assigned identity by client id.
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
  { name: 'AZURE_OPENAI_ENDPOINT', value: openAiEndpoint }
  { name: 'AZURE_OPENAI_DEPLOYMENT', value: openAiDeployment }
  { name: 'AZURE_OPENAI_API_VERSION', value: openAiApiVersion }
  // Which deployments are reasoning models is configuration: max_completion_tokens, reasoning_effort, no temperature.
  { name: 'CHAT_REASONING_DEPLOYMENTS', value: reasoningDeployments }
  // Chat behaviour that depends on the platform.
  { name: 'CHAT_CORS_ORIGINS', value: corsHandledBy == 'app' ? join(corsOriginList, ',') : '' }
  { name: 'CHAT_DEADLINE_SECONDS', value: string(chatDeadlineSeconds) }
  { name: 'CHAT_HEARTBEAT_SECONDS', value: string(chatHeartbeatSeconds) }
  { name: 'CHAT_LOG_CONTENT', value: chatLogContent ? 'true' : 'false' }
  { name: 'CHAT_LOG_LEVEL', value: chatLogLevel }
  // Resumable streams shared by every instance, keyless (the identity's Storage Blob Data Owner role).
  { name: 'CHAT_STREAM_STORE', value: 'blob' }
  { name: 'CHAT_STREAM_STORE_URL', value: storageBlobEndpoint }
  { name: 'CHAT_STREAM_STORE_CONTAINER', value: streamContainerName }
]

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      // Platform CORS only in 'platform' mode; in 'app' mode the list stays empty so the
      // platform does not answer preflights or rewrite the app's CORS headers.
      cors: {
        allowedOrigins: corsHandledBy == 'platform' ? corsOriginList : []
        supportCredentials: false
      }
      appSettings: concat(appSettings, extraAppSettings)
    }
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output chatEndpoint string = 'https://${functionApp.properties.defaultHostName}/api/chat'
