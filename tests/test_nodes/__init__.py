"""Test-only nodes loaded beside the pack in the test server: tiny models, conditioning and latents."""
import torch

from tools.support import tiny_models  # the repository root is on PYTHONPATH in the test server
from tools.support.comfy_env import load_pack

load_pack()


class TinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd15", "sdxl", "vpred"],), "seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "DragEdit/testing"

    def load(self, kind, seed):
        with torch.inference_mode():  # like a stock loader: weights become inference tensors
            sd = getattr(tiny_models, kind)(seed).model.diffusion_model.state_dict()
            sd = {k: v.clone() for k, v in sd.items()}
        with torch.inference_mode(False):
            m = getattr(tiny_models, kind)(seed)
        with torch.inference_mode():
            m.model.diffusion_model.load_state_dict(sd)
            for name, p in list(m.model.diffusion_model.named_parameters()):
                pass
        return (m,)


class TinyConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1}), "pooled": ("BOOLEAN", {"default": False})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "DragEdit/testing"

    def make(self, seed, pooled):
        return (tiny_models.conditioning(seed, pooled=pooled),)


class TinyLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "size": ("INT", {"default": 16}),
                             "batch": ("INT", {"default": 1})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "DragEdit/testing"

    def make(self, seed, size, batch):
        s = tiny_models.latent(seed, size)["samples"]
        return ({"samples": s.repeat(batch, 1, 1, 1)},)


class TinyDiTLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "size": ("INT", {"default": 8})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "DragEdit/testing"

    def make(self, seed, size):
        return (tiny_models.dit_latent(seed, size=size),)


NODE_CLASS_MAPPINGS = {"DragEditTestTinyModel": TinyModel, "DragEditTestConditioning": TinyConditioning,
                       "DragEditTestLatent": TinyLatent, "DragEditTestDiTLatent": TinyDiTLatent}


class GradProbe:
    """Backpropagates from a decoder feature to the latent through the UNet, inside a node run by the executor."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "latent": ("LATENT",), "positive": ("CONDITIONING",)}}
    RETURN_TYPES = ("FLOAT",)
    OUTPUT_NODE = True
    FUNCTION = "probe"
    CATEGORY = "DragEdit/testing"

    def probe(self, model, latent, positive):
        from dragedit.core import host
        run = host.clone(model)
        fs = host.FeatureStore()
        blk = host.up_block_outputs(model)[0]
        host.patch_feature_capture(run, fs, [blk])
        sig = host.ddim_sigmas(model, 10)
        got = {}

        def loop(den, x, s):
            with host.grad_enabled(den):
                z = host.grad_input(x)
                fs.truncate = True
                den.x0(z, s[5])
                (fs.half(blk) ** 2).mean().backward()
                got["g"] = float(z.grad.abs().sum())
            return x

        host.session(run, positive, None, 1.0, latent["samples"], sig, loop)
        if not (got["g"] > 0 and got["g"] < float("inf")):
            raise RuntimeError(f"no gradient reached the latent: {got['g']}")
        return {"ui": {"grad_norm": [got["g"]]}, "result": (got["g"],)}


NODE_CLASS_MAPPINGS["DragEditTestGradProbe"] = GradProbe


class DiTConditioning:
    """A CONDITIONING at a real DiT's text widths (FLUX: T5-XXL context 4096, CLIP-L pooled 768), for tests of the
    real-size FLUX files, whose T5-XXL text encoder (4.7 B parameters, fixed config) cannot be made small."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1}), "width": ("INT", {"default": 4096}),
                             "pooled_width": ("INT", {"default": 768}), "tokens": ("INT", {"default": 8})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "DragEdit/testing"

    def make(self, seed, width, pooled_width, tokens):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, width, generator=g),
                  {"pooled_output": torch.randn(1, pooled_width, generator=g)}]],)


NODE_CLASS_MAPPINGS["DragEditTestDiTConditioning"] = DiTConditioning


class RNGState:
    """A digest of the process's global torch RNG state (CPU), taken after the node wired to `after` ran: for the
    tests that nodes leave it as they found it (nothing of one prompt may change what the next one draws)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nonce": ("INT", {"default": 0, "min": 0, "max": 2**31})},
                "optional": {"after": ("*",)}}
    RETURN_TYPES = ("STRING",)
    OUTPUT_NODE = True
    FUNCTION = "probe"
    CATEGORY = "DragEdit/testing"

    @classmethod
    def VALIDATE_INPUTS(cls, input_types=None, **_):
        return True                                          # `after` takes any type

    def probe(self, nonce, after=None):
        import hashlib
        digest = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
        return {"ui": {"rng": [digest]}, "result": (digest,)}


NODE_CLASS_MAPPINGS["DragEditTestRNGState"] = RNGState
