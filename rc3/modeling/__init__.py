"""The RC3 model: visual front ends over an HF mBART encoder-decoder, and its heads."""
from rc3.modeling.build import build_model, load_tokenizer
from rc3.modeling.model import EncoderOutput, RC3Model, mbart_config_from
from rc3.modeling.visual import VISUAL_MODES, VisualFrontEnd

__all__ = ["build_model", "load_tokenizer", "EncoderOutput", "RC3Model", "VISUAL_MODES", "VisualFrontEnd", "mbart_config_from"]
