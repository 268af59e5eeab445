"""Node classes of the pack, one module per capability."""
from . import (ddpm_inversion, drag_instructions, dragdiffusion, dragondiffusion, flow_inversion, flowedit, inversion,
               preview, regiondrag, rf_inversion, sega, shapes_demo)
from ._ui import merge_mappings

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = merge_mappings(
    [inversion, ddpm_inversion, flow_inversion, rf_inversion, flowedit, sega, drag_instructions, regiondrag, dragdiffusion, dragondiffusion,
     shapes_demo, preview])
