"""The reference chat page, served by the app itself (no build step, no CDN)."""

from webui.assets import StaticAssets, ui_assets

__all__ = ["StaticAssets", "ui_assets"]
