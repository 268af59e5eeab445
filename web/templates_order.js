// The template browser lists this pack's example workflows alphabetically by file name, the title the frontend
// shows for a custom node's template. ComfyUI's /api/workflow_templates lists a pack's files in directory order
// (glob: unsorted, hash order on ext4) and frontends 1.32-1.58 show them in that order by default; this module
// sorts this pack's list where the frontend fetches it (api.getWorkflowTemplates), so that the file names
// (tools/support/examples.py: "Demo - ...", "SD1.5 - ...", "SDXL - ...") put the demo workflows, which need no
// download, first. Other packs' lists are left as the server sent them.
import { api } from "../../scripts/api.js";

/** The folder this pack is installed under (the key of its list): /extensions/<folder>/templates_order.js. */
export const PACK = decodeURIComponent(new URL(import.meta.url).pathname.split("/").slice(-2, -1)[0]);

/** templates ({pack folder: [file names]}) with `pack`'s names in alphabetical order (the frontend's own
 * "Alphabetical" order: String.localeCompare); anything else is returned as it came. */
export function sortPackTemplates(templates, pack = PACK) {
  if (!templates || typeof templates !== "object" || !Array.isArray(templates[pack])) return templates;
  return { ...templates, [pack]: [...templates[pack]].sort((a, b) => String(a).localeCompare(String(b))) };
}

const original = api.getWorkflowTemplates;
if (typeof original === "function" && !original.dragEditSorted) {
  const sorted = async function (...args) {
    return sortPackTemplates(await original.apply(this, args));
  };
  sorted.dragEditSorted = true;
  api.getWorkflowTemplates = sorted;
}
