// Entry point for `azd up` / `azd provision`: creates one resource group with everything the
// streaming chat function app needs. Keyless end to end: no parameter or output carries a secret.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; used for the resource group name and the unique resource token.')
param environmentName string

@minLength(1)
@description('Region for all resources except (optionally) Azure OpenAI. Must offer Flex Consumption.')
// Flex Consumption regions (Azure-Samples/functions-quickstart-python-http-azd infra/main.bicep, 2025-11,
// without the canary region eastus2euap; live list: `az functionapp list-flexconsumption-locations`).
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the developer running azd (AZURE_PRINCIPAL_ID). Gets OpenAI User for local runs.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal', 'Group'])
param principalType string = 'User'

@description('Region for the Azure OpenAI account (model availability differs by region). Empty: same as location.')
param openAiLocation string = ''

// ---- Model deployment -----------------------------------------------------------------------
// Defaults: a GA gpt-5 family model that new subscriptions can still deploy (checked 2026-12-03 against
// Microsoft's model retirement schedule; docs/deploy.md says how to pick another). All of these are azd
// environment values (infra/main.parameters.json), e.g. `azd env set AZURE_OPENAI_CHAT_MODEL gpt-5.4`.
@description('Model name, e.g. gpt-5.4-mini, gpt-5.4, gpt-5.5 (AZURE_OPENAI_CHAT_MODEL).')
param chatModelName string = 'gpt-5.4-mini'
@description('Model version (AZURE_OPENAI_CHAT_MODEL_VERSION); must be a version of chatModelName.')
param chatModelVersion string = '2026-03-17'
@description('Deployment name the app receives as AZURE_OPENAI_DEPLOYMENT. Empty: the model name.')
param chatDeploymentName string = ''
@description('GlobalStandard, DataZoneStandard, Standard, ... (must be offered for the model in openAiLocation).')
param chatDeploymentSkuName string = 'GlobalStandard'
@description('Capacity in thousands of tokens per minute (needs that much quota in openAiLocation).')
@minValue(1)
param chatDeploymentCapacity int = 30
@description('Is the chat model a reasoning model (gpt-5 family, o-series)? Then the app sends it max_completion_tokens and reasoning_effort and refuses temperature (AZURE_OPENAI_CHAT_REASONING). Set false for gpt-4.1 / gpt-4o and other non-reasoning models.')
param chatModelIsReasoning bool = true
@description('Azure OpenAI data-plane API the app uses: v1 (the versionless GA API, Microsoft\'s listed API for the gpt-5 family) or a dated version such as 2025-04-01-preview.')
param openAiApiVersion string = 'v1'
@description('Restore a soft-deleted Azure OpenAI account of the same name (set by the preprovision hook after `azd down` without --purge).')
param openAiRestore bool = false

// ---- Function app runtime ----------------------------------------------------------------------
@description('Flex Consumption Python version (AZURE_PYTHON_VERSION). 3.13 runs Microsoft\'s new worker (azure-functions-runtime) with azure-functions 2.x.')
@allowed(['3.11', '3.12', '3.13'])
param pythonVersion string = '3.12'

// ---- Flex Consumption scale -------------------------------------------------------------------
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Open streams per instance. Streams are I/O-bound (awaiting tokens), so one instance serves many; at 1 every stream would pin a whole instance.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

// ---- App behaviour ---------------------------------------------------------------------------
@description('Comma-separated browser origins allowed to call /api/chat, e.g. "https://app.example.com,http://localhost:5173". Empty: no cross-origin browser access.')
param corsAllowedOrigins string = ''

@description('app: the function implements CORS from CHAT_CORS_ORIGINS (default). platform: App Service CORS (siteConfig.cors) and CHAT_CORS_ORIGINS is left empty.')
@allowed(['app', 'platform'])
param corsHandledBy string = 'app'

@description('Stream budget in seconds; must stay below the 230 s front-end response limit.')
@minValue(10)
@maxValue(225)
param chatDeadlineSeconds int = 200

@minValue(1)
@maxValue(60)
param chatHeartbeatSeconds int = 15

param chatLogContent bool = false

@allowed(['DEBUG', 'INFO', 'WARNING', 'ERROR'])
param chatLogLevel string = 'INFO'

@description('Grant Storage Queue/Table Data Contributor to the app identity (not needed for HTTP-only).')
param grantQueueAndTableRoles bool = false

@description('Grant the developer Monitoring Metrics Publisher so local runs can send telemetry.')
param grantDeveloperMonitoring bool = false

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = 'func-${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
var chatDeployment = empty(chatDeploymentName) ? chatModelName : chatDeploymentName

resource rg 'Microsoft.Resources/resourceGroups@2022-09-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'core/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    streamContainerName: 'chat-streams'
  }
}

module monitoring 'core/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module openAi 'core/openai.bicep' = {
  name: 'openai'
  scope: rg
  params: {
    name: 'oai-${resourceToken}'
    location: empty(openAiLocation) ? location : openAiLocation
    tags: tags
    deploymentName: chatDeployment
    modelName: chatModelName
    modelVersion: chatModelVersion
    skuName: chatDeploymentSkuName
    capacity: chatDeploymentCapacity
    restore: openAiRestore
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    openAiAccountName: openAi.outputs.name
    appPrincipalId: identity.outputs.principalId
    developerPrincipalId: principalId
    developerPrincipalType: principalType
    grantDeveloperMonitoring: grantDeveloperMonitoring
    grantQueueAndTableRoles: grantQueueAndTableRoles
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  // Create the app after its identity can reach storage, so the host's first start succeeds
  // (role propagation can still take a few minutes).
  dependsOn: [rbac]
  params: {
    planName: 'plan-${resourceToken}'
    functionAppName: functionAppName
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    streamContainerName: storage.outputs.streamContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    openAiEndpoint: openAi.outputs.endpoint
    openAiDeployment: openAi.outputs.deploymentName
    openAiApiVersion: openAiApiVersion
    reasoningDeployments: chatModelIsReasoning ? openAi.outputs.deploymentName : ''
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    corsAllowedOrigins: corsAllowedOrigins
    corsHandledBy: corsHandledBy
    chatDeadlineSeconds: chatDeadlineSeconds
    chatHeartbeatSeconds: chatHeartbeatSeconds
    chatLogContent: chatLogContent
    chatLogLevel: chatLogLevel
  }
}

// Outputs become azd environment values (`azd env get-values`); none of them is a secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output CHAT_ENDPOINT_URL string = api.outputs.chatEndpoint
output AZURE_OPENAI_ENDPOINT string = openAi.outputs.endpoint
output AZURE_OPENAI_DEPLOYMENT string = openAi.outputs.deploymentName
output AZURE_OPENAI_API_VERSION string = openAiApiVersion
output CHAT_REASONING_DEPLOYMENTS string = chatModelIsReasoning ? openAi.outputs.deploymentName : ''
output AZURE_OPENAI_ACCOUNT_NAME string = openAi.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output AZURE_API_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output CHAT_CORS_HANDLED_BY string = corsHandledBy
output AZURE_OPENAI_CHAT_MODEL string = chatModelName
output AZURE_OPENAI_CHAT_MODEL_VERSION string = chatModelVersion
output AZURE_PYTHON_VERSION string = pythonVersion
// When the app identity got its storage role: the predeploy hook waits until it has propagated.
output AZURE_APP_STORAGE_ROLE_CREATED_ON string = rbac.outputs.appStorageRoleCreatedOn
