#!/usr/bin/env pwsh
# azd postprovision hook (Windows / PowerShell 7+): write local.settings.json so `func start` uses
# the Azure OpenAI deployment azd just provisioned, authenticated with the developer's own Entra
# login (`az login` / `azd auth login`) - no keys. Idempotent: it only (re)sets the keys in
# $managed and keeps everything else already in local.settings.json.
$ErrorActionPreference = 'Stop'

$root = Resolve-Path (Join-Path $PSScriptRoot '..' '..')
Set-Location $root

$target = Join-Path $root 'local.settings.json'
$example = Join-Path $root 'local.settings.json.example'

$lines = azd env get-values
if ($LASTEXITCODE -ne 0) {
    throw "write-local-settings: 'azd env get-values' failed; is an azd environment selected?"
}

# Parse KEY="value" lines (dotenv style).
$envValues = @{}
foreach ($line in $lines) {
    if ($line -match '^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$') {
        $key = $Matches[1]
        $raw = $Matches[2].Trim()
        if ($raw.Length -ge 2 -and $raw.StartsWith('"') -and $raw.EndsWith('"')) {
            $raw = $raw.Substring(1, $raw.Length - 2).Replace('\"', '"').Replace('\\', '\')
        }
        elseif ($raw.Length -ge 2 -and $raw.StartsWith("'") -and $raw.EndsWith("'")) {
            $raw = $raw.Substring(1, $raw.Length - 2)
        }
        $envValues[$key] = $raw
    }
}

foreach ($required in @('AZURE_OPENAI_ENDPOINT', 'AZURE_OPENAI_DEPLOYMENT')) {
    if (-not $envValues[$required]) {
        throw "write-local-settings: azd env has no $required; run 'azd provision' first."
    }
}

if (Test-Path $target) {
    $settings = Get-Content $target -Raw | ConvertFrom-Json -AsHashtable
}
elseif (Test-Path $example) {
    $settings = Get-Content $example -Raw | ConvertFrom-Json -AsHashtable
}
else {
    $settings = [ordered]@{}
}

$settings['IsEncrypted'] = $false
if (-not $settings.Contains('Values')) { $settings['Values'] = [ordered]@{} }
$values = $settings['Values']

$apiVersion = $envValues['AZURE_OPENAI_API_VERSION']
if (-not $apiVersion) { $apiVersion = if ($values.Contains('AZURE_OPENAI_API_VERSION')) { $values['AZURE_OPENAI_API_VERSION'] } else { '' } }
$reasoning = if ($envValues.Contains('CHAT_REASONING_DEPLOYMENTS')) { $envValues['CHAT_REASONING_DEPLOYMENTS'] } elseif ($values.Contains('CHAT_REASONING_DEPLOYMENTS')) { $values['CHAT_REASONING_DEPLOYMENTS'] } else { '' }

$managed = [ordered]@{
    # Local Functions host needs these; Azure (Flex) must not have FUNCTIONS_WORKER_RUNTIME.
    'FUNCTIONS_WORKER_RUNTIME'    = 'python'
    'PYTHON_ENABLE_INIT_INDEXING' = '1'
    # The provisioned model, reached with the developer's Entra login.
    'AZURE_OPENAI_ENDPOINT'       = $envValues['AZURE_OPENAI_ENDPOINT']
    'AZURE_OPENAI_DEPLOYMENT'     = $envValues['AZURE_OPENAI_DEPLOYMENT']
    'AZURE_OPENAI_API_VERSION'    = $apiVersion
    'CHAT_REASONING_DEPLOYMENTS'  = $reasoning
    # Keyless: local auth is disabled on the account; AZURE_CLIENT_ID stays empty locally so
    # DefaultAzureCredential uses your az/azd login instead of looking for a managed identity.
    'AZURE_OPENAI_API_KEY'        = ''
    'AZURE_CLIENT_ID'             = ''
}
if (-not $values.Contains('AzureWebJobsStorage')) { $values['AzureWebJobsStorage'] = '' }
foreach ($key in $managed.Keys) { $values[$key] = $managed[$key] }

$tmp = "$target.tmp"
($settings | ConvertTo-Json -Depth 10) + "`n" | Set-Content -Path $tmp -Encoding utf8NoBOM -NoNewline
Move-Item -Force $tmp $target
Write-Host "write-local-settings: local.settings.json now targets $($managed['AZURE_OPENAI_ENDPOINT']) (deployment $($managed['AZURE_OPENAI_DEPLOYMENT'])). Sign in with 'az login' or 'azd auth login'."
