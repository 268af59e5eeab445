"""ComfyUI in-process (--cpu) and this pack as `dragedit` for this folder's tests, started when this conftest is
imported (before the test modules that import `dragedit` are collected), and the tiny-model fixtures."""
from tools.support.comfy_fixtures import cond, cond_xl, flux, sd15_model, sd3, sdxl_model, vpred_model  # noqa: F401
