"""s3prl upstream expert for SCORE (and any HuBERT) checkpoints.

How to use: through s3prl (``-u score_hubert -k CKPT``) after :func:`score_upstream.register`, or
directly::

    from score_upstream.s3prl.upstream.expert import UpstreamExpert
    expert = UpstreamExpert("exp/score/score_hubert.pt").eval()
    out = expert([torch.randn(16000), torch.randn(12000)])
    out["hidden_states"]      # 13 tensors (B, T, D) for a 12-layer model, 50 Hz

The hidden states are what s3prl's stock ``hubert_local`` expert returns for the same weights: the
input of every transformer layer (after the pre-encoder LayerNorm for post-LN models, padded frames
included, cut to the shortest) and the encoder output. The checkpoint may be in any format
:func:`score_upstream.models.hubert.load_hubert` reads; a SCORE checkpoint is s3prl's converted format plus
metadata keys.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from s3prl.upstream.interfaces import UpstreamBase
from torch.nn.utils.rnn import pad_sequence

from score_upstream.models.hubert import load_hubert

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DOWNSAMPLE_RATE = 320


class UpstreamExpert(UpstreamBase):
    """HuBERT hidden states for s3prl's runner and ``S3PRLUpstream``.

    Args:
        ckpt: checkpoint path (s3prl converted ``.pt``, fairseq ``.pt`` or transformers directory).
        **kwargs: what s3prl passes to every upstream (``model_config``, ``refresh``...); ignored.
    """

    def __init__(self, ckpt: str, **kwargs):
        super().__init__()
        bundle = load_hubert(ckpt)
        self.model = bundle.model
        self.normalize = bundle.normalize
        self.source = str(ckpt)
        self.score_meta = bundle.extra.get("score")
        # Same inference settings as s3prl's HuBERT expert: no layer drop, CNN front-end without grad.
        self.model.feature_grad_mult = 0.0
        self.model.encoder.layerdrop = 0.0
        self._captured: list[torch.Tensor] = []
        for layer in self.model.encoder.layers:
            layer.register_forward_hook(self._capture_layer_input)
        self.model.encoder.register_forward_hook(self._capture_encoder_output)
        self._startup_check()

    def _capture_layer_input(self, module, inputs, output):
        self._captured.append(inputs[0].transpose(0, 1))  # layers run time-major (T, B, D)

    def _capture_encoder_output(self, module, inputs, output):
        self._captured.append(output[0])

    def _startup_check(self) -> None:
        gen = torch.Generator().manual_seed(0)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            hs = self.forward([torch.randn(SAMPLE_RATE, generator=gen)])["hidden_states"]
        self.train(was_training)
        expected = len(self.model.encoder.layers) + 1
        if len(hs) != expected or hs[-1].shape[1] != SAMPLE_RATE // DOWNSAMPLE_RATE - 1:
            raise RuntimeError(
                f"{self.source}: one second of noise gave {len(hs)} hidden states of {hs[-1].shape[1]} frames, "
                f"expected {expected} of {SAMPLE_RATE // DOWNSAMPLE_RATE - 1}"
            )

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """Args: wavs: list of 1-D float waveforms at 16 kHz. Returns ``{"hidden_states": [(B, T, D)] * (L+1), ...}``."""
        if self.normalize:
            wavs = [F.layer_norm(w, w.shape) for w in wavs]
        device = wavs[0].device
        lengths = torch.tensor([len(w) for w in wavs], device=device)
        padding_mask = torch.arange(int(lengths.max()), device=device)[None, :] >= lengths[:, None]
        padded = pad_sequence(wavs, batch_first=True)
        self._captured = []
        try:
            self.model.extract_features(padded, padding_mask=padding_mask, mask=False)
            hiddens = self._captured
        finally:
            self._captured = []
        # Layer inputs are padded to an even length inside the encoder; its output is not.
        frames = min(h.size(1) for h in hiddens)
        hiddens = [h[:, :frames] for h in hiddens]
        return {"hidden_states": hiddens, "last_hidden_state": hiddens[-1]}
