"""diffusers interoperability: its schedulers drive our UNet, our models save in its format, open pipelines load.

Three bridges to the Hugging Face ``diffusers`` library (https://github.com/huggingface/diffusers),
one module each:

1. :mod:`~diffusion_lib.interop.schedulers` - **schedulers on our model.** ``scheduler_from_schedule``
   builds any diffusers scheduler on our betas; ``sample_with_diffusers_scheduler`` runs its loop on our
   network through ``DiffusersUNetAdapter`` (guidance, x_0 clipping with eps re-derived, conversion to
   the scheduler's ``prediction_type``). Our ``ddim_sample`` and diffusers' ``DDIMScheduler`` agree to
   float32 rounding on the same model and noise.
2. :mod:`~diffusion_lib.interop.pipeline_format` - **diffusers' folder format.** ``save_pretrained``
   writes a trained model as a ``DDPMPipeline`` folder (``DiffusersUNet`` wraps our network as a
   diffusers model); ``load_pretrained`` reads it back into a ``LoadedModel``.
3. :mod:`~diffusion_lib.interop.hub` - **open pretrained pipelines.** ``load_pretrained_pipeline``
   opens a local folder, the local Hugging Face cache or the hub (failing fast offline);
   ``pipeline_sample`` runs any pipeline with a chosen scheduler, steps and guidance.

diffusers is an optional dependency (the ``interop`` extra). Importing this package does not import it:
each name below loads its module on first use (PEP 562), e.g. ``from diffusion_lib.interop import
save_pretrained`` or ``interop.SCHEDULERS``. Saved folders name ``diffusion_lib.interop.DiffusersUNet``
(independent of the file that holds it), which diffusers resolves through this package.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# A saved folder's model_index.json names ["diffusion_lib.interop", "DiffusersUNet"]; diffusers then imports this
# package and looks up its loadable base classes here too (getattr(package, "ModelMixin")), so it resolves as well.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "schedulers": ("SCHEDULERS", "scheduler_class", "scheduler_from_schedule", "alpha_bar_at",
                   "DiffusersUNetAdapter", "DiffusersSamplerOutput", "sample_with_diffusers_scheduler"),
    "pipeline_format": ("DiffusersUNet", "save_pretrained", "load_pretrained", "METADATA_FILE", "METADATA_KIND",
                        "METADATA_VERSION", "ModelMixin"),
    "hub": ("PretrainedUnavailableError", "hub_offline_reason", "load_pretrained_pipeline", "pipeline_sample",
            "HUB_PROBE_TIMEOUT_S"),
})
