# azd predeploy hook: see infra/scripts/azd_hooks.py (needs python on PATH).
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '../..')
$python = Get-Command python3 -ErrorAction SilentlyContinue
if (-not $python) { $python = Get-Command python }
& $python.Source infra/scripts/azd_hooks.py predeploy
exit $LASTEXITCODE
