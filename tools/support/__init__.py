"""Helpers shared by tests/, bench/, tools/ and demo/ (imported as the package `tools.support`, with the repository root
on sys.path: pytest.ini `pythonpath = .`, scripts run as `python -m bench.x` / `python -m tools.x` /
`python -m demo.run` from the root).

comfy_env       ComfyUI on sys.path in-process (the one sys.path insertion) and this pack loaded as `dragedit`
comfy_server    the real ComfyUI server in a subprocess (with tests/test_nodes), /object_info, prompts, history
workflow_api    UI-format workflow -> API format, from /object_info (what the frontend does)
workflow_layout LiteGraph's node sizes, for the example-workflow layout (tools/layout_workflows.py, tests)
tiny_models     tiny SD1.5 / SDXL / v-prediction models built from config (real model_base + ModelPatcher)
diffusers_bridge a diffusers UNet holding the weights of the tiny SD1.5 model (parity tests)
diffusers_pipelines tiny random-weight diffusers SEGA / LEDITS++ pipelines, their recorded inversion (parity tests)
node_calls      node functions and stock samplers called as the executor calls them; a UNet call counter
comfy_fixtures  in-process ComfyUI + pytest fixtures (tiny models, conditioning) for the tests that need them
sd_checkpoints  random-weight SD1.5 / SDXL checkpoints that pass ComfyUI's model detection
browser_util    headless Chromium (Playwright) on the ComfyUI frontend
pytest_rootdir  pytest plugin: the repository root (the pack's __init__.py) collected as a plain folder

The name is not `tests.support`: ComfyUI has a `tests` package of its own, first on sys.path in the server."""
