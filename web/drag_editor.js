// ComfyUI glue of the "Drag Instructions" editor: registers the extension, puts a DragEditor (drag_widget.js)
// as a DOM widget on every Drag Instructions node, forwards the node's life cycle (created, configured from a
// workflow, executed, connections changed, removed) and gives the editor the few ComfyUI services it uses (the
// host object). Modules: drag_widget.js (the editor: DOM, data, image), drag_tools.js (tools and input),
// drag_view.js (zoom / pan / coordinates), drag_draw.js (rendering), drag_state.js (the JSON and its limits).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { DragEditor, MIN_HEIGHT, el } from "./drag_widget.js";

const DATA_WIDGET = "drag_data";
const EDITOR_WIDGET = "drag_editor";
const POLL_MS = 400;
// Shown on the node where a "Nodes 2.0" (Vue) renderer never mounts DOM widgets (frontend 1.27.x mounts only
// its built-in widget types there and drops the DOM-widget overlay; 1.32 mounts them).
const VUE_HOST_NOTE = "Drag editor unavailable: this ComfyUI frontend's Nodes 2.0 (Vue) renderer does not show " +
  "custom DOM widgets. Turn Nodes 2.0 off (or update the frontend) to draw; the stored drag_data is kept and still runs.";
const VUE_HOST_POLLS = 2; // consecutive polls without the editor in the Vue node before the note shows

/** Is this node definition the pack's "Drag Instructions" node? (by its inputs/outputs, robust to renames) */
function isDragInstructionsDef(nodeData) {
  const req = nodeData?.input?.required || {};
  return !!req[DATA_WIDGET] && !!req.image && (nodeData.output || []).includes("DRAG");
}

/** Index of the input named `name` on node, or -1. */
function inputSlot(node, name) {
  return (node.inputs || []).findIndex((i) => i.name === name);
}

/** True when the input named `name` is connected. node.isInputConnected is the frontends' API (1.58 logs
 * reading input.link as deprecated); input.link is the fallback for frontends without it. */
function inputConnected(node, name) {
  const slot = inputSlot(node, name);
  if (slot < 0) return false;
  if (typeof node.isInputConnected === "function") return !!node.isInputConnected(slot);
  return node.inputs[slot].link != null;
}

/** The node feeding the input named `name`, or null. */
function inputNode(node, name) {
  const slot = inputSlot(node, name);
  return slot >= 0 && inputConnected(node, name) ? node.getInputNode?.(slot) ?? null : null;
}

/** URL of ComfyUI's /view endpoint for an {filename, subfolder, type} image reference. */
function viewUrl(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "input" });
  return api.apiURL(`/view?${q.toString()}`);
}

/** Tell the frontend's change tracker that the graph changed. Its copy of the workflow is what a page reload
 * restores (and what undo, the "modified" mark and autosave use); the frontend refreshes it on its own only after
 * graph-canvas events, which the editor keeps for itself. The tracker is the active workflow's: reached through
 * app.extensionManager.workflow (frontends 1.2x .. 1.5x) or app.workflowManager (older ones); captureCanvasState
 * is 1.5x's name for the deprecated checkState. A frontend without either has nothing to tell. */
function notifyChangeTracker() {
  try {
    const wf = app.extensionManager?.workflow?.activeWorkflow ?? app.workflowManager?.activeWorkflow;
    const tracker = wf?.changeTracker;
    if (typeof tracker?.captureCanvasState === "function") tracker.captureCanvasState();
    else if (typeof tracker?.checkState === "function") tracker.checkState();
  } catch (e) {
    console.warn("DragEdit: could not tell the workflow change tracker about an edit", e);
  }
}

/** The ComfyUI services a DragEditor uses. */
const HOST = {
  viewUrl,
  notifyChange: notifyChangeTracker,
  graphWheel: (e) => app.canvas?.processMouseWheel?.(e),
  inputConnected,
  inputNode,
};

/** Detect a "Nodes 2.0" (Vue) renderer that renders the node but never mounts the editor (frontend 1.27.x);
 * put a text note on the node there instead. Classic rendering always hosts the editor. */
function checkHost(ed) {
  const vue = !!window.LiteGraph?.vueNodesMode;
  const vueEl = vue ? document.querySelector(`[data-node-id="${CSS.escape(String(ed.node.id))}"]`) : null;
  if (!vue || (vueEl && vueEl.contains(ed.root))) {
    ed.hostMisses = 0;
    ed.hostProblem = "";
    ed.hostNote?.remove();
    return;
  }
  if (!vueEl || ed.node.flags?.collapsed) {
    // Not rendered now (off screen) or collapsed (no widgets shown): nothing to decide, nothing to show.
    ed.hostMisses = 0;
    ed.hostNote?.remove();
    return;
  }
  ed.hostMisses = (ed.hostMisses || 0) + 1;
  if (ed.hostMisses < VUE_HOST_POLLS) return;
  ed.hostProblem = VUE_HOST_NOTE;
  if (!ed.hostNote) {
    ed.hostNote = el("div", { padding: "6px 10px", margin: "4px 8px", border: "1px solid #a86", borderRadius: "4px",
      color: "#fc9", fontSize: "12px", lineHeight: "16px", whiteSpace: "normal", pointerEvents: "none" });
    ed.hostNote.className = "dragedit-host-note";
    ed.hostNote.dataset.role = "host-note";
    ed.hostNote.textContent = VUE_HOST_NOTE;
  }
  if (ed.hostNote.parentElement !== vueEl) vueEl.appendChild(ed.hostNote);
}

/** Page-level listeners, in the capture phase, for the editor's zoom and pan gestures over its canvas. Nodes 2.0
 * forwards Ctrl+wheel and middle-button drags to the graph (pan / zoom) before they reach the canvas, so the
 * canvas' own listeners would never see them. Middle-drag pans the editor only while it is zoomed in; at 100%
 * it stays the graph's. */
function installPageListeners() {
  if (window.__dragEditPageListeners) return;
  window.__dragEditPageListeners = true;
  window.addEventListener("wheel", (e) => {
    const ed = e.target?.dragEditor;
    if (!ed || ed.destroyed || !(e.ctrlKey || e.metaKey || e.altKey)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    ed.onZoomWheel(e);
  }, { capture: true, passive: false });
  const handlers = { pointerdown: "onPointerDown", pointermove: "onPointerMove", pointerup: "onPointerUp", pointercancel: "onPointerUp" };
  for (const [type, method] of Object.entries(handlers)) {
    window.addEventListener(type, (e) => {
      const ed = e.target?.dragEditor;
      if (!ed || ed.destroyed) return;
      const startsPan = type === "pointerdown" && e.button === 1 && ed.zoom > 1;
      if (!startsPan && ed.drag?.type !== "pan") return;
      e.stopImmediatePropagation();
      ed[method](e, type === "pointercancel");
    }, { capture: true });
  }
}

/** Hide a widget in the classic canvas and in Nodes 2.0 (Vue) rendering, keeping its value serialised. */
function hideWidget(w) {
  w.hidden = true;
  w.options = w.options || {};
  w.options.hidden = true;
  if (w.options.minNodeSize) delete w.options.minNodeSize;
  // The classic layout hands free space to every DOM widget, hidden or not: ask for none.
  w.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });
}

app.registerExtension({
  name: "DragEdit.DragEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isDragInstructionsDef(nodeData)) return;
    installPageListeners();

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const dataWidget = (this.widgets || []).find((w) => w.name === DATA_WIDGET);
      if (!dataWidget) return r;
      hideWidget(dataWidget);
      const editor = new DragEditor(this, dataWidget, HOST);
      this.dragEditor = editor;
      const widget = this.addDOMWidget(EDITOR_WIDGET, "dragedit-editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getValue: () => "",
        setValue: () => {},
        getMinHeight: () => MIN_HEIGHT,
      });
      widget.serialize = false;
      editor.domWidget = widget;
      editor.loadFromWidget();
      editor.root.dataset.dragEditNode = String(this.id);
      editor.timer = setInterval(() => {
        if (editor.destroyed) return;
        checkHost(editor);
        editor.poll();
      }, POLL_MS);
      const [w, h] = this.size;
      this.setSize([Math.max(w, 420), Math.max(h, 470)]);
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      // A workflow was loaded: rebuild the editor from the stored JSON and the stored last-run image.
      if (this.dragEditor) {
        this.dragEditor.root.dataset.dragEditNode = String(this.id);
        this.dragEditor.loadFromWidget();
        this.dragEditor.refreshImage();
      }
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      this.dragEditor?.onExecuted(output);
      return r;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const r = onConnectionsChange?.apply(this, arguments);
      this.dragEditor?.refreshImage();
      this.dragEditor?.updateStatus();
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      const ed = this.dragEditor;
      if (ed) {
        clearInterval(ed.timer);
        ed.hostNote?.remove();
        ed.destroy();
      }
      return onRemoved?.apply(this, arguments);
    };
  },
});
