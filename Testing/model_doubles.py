"""Test doubles of the MedSAM2 network for tests that need the model's object score to follow a known extent."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from MedSAM2Lib.inference.preprocessing import model_input
from MedSAM2Lib.model.checkpoint import load_model
from MedSAM2Lib.model.medsam2 import ImageFeatures, MedSAM2, SliceOutput


class ScriptedObjectScoreDouble(MedSAM2):
    """TEST DOUBLE for the object-score head: the real network runs, but tracked slices get the object scores of
    a script (slice index -> score; missing: present). It recognises a slice of ``volume`` (the uint8 stack the
    predictor is given) by its model input."""

    def __init__(self, config, volume: np.ndarray, scores: Dict[int, float]) -> None:
        super().__init__(config)
        self.slices = [model_input(image, config.image_size) for image in volume]
        self.scores = scores

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        features = super().encode_image(image)
        features.slice_index = next(i for i, known in enumerate(self.slices) if torch.equal(known, image[0]))
        return features

    def segment(self, features, points=None, mask_logits=None, memory=None) -> SliceOutput:
        output = super().segment(features, points, mask_logits, memory)
        if points is not None or memory is None:  # a prompted slice keeps the model's own score
            return output
        score = torch.full_like(output.object_score_logits, self.scores.get(features.slice_index, 1.0))
        return SliceOutput(output.low_res_logits, output.obj_ptr, score, output.iou_scores, output.candidates)


def scripted_score_model(config, checkpoint, volume: np.ndarray, scores: Dict[int, float]) -> ScriptedObjectScoreDouble:
    """The double with a checkpoint's weights."""
    model = ScriptedObjectScoreDouble(config, volume, scores)
    model.load_state_dict(load_model(checkpoint, config).state_dict())
    return model.eval()
