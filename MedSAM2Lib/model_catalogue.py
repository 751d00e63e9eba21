"""The MedSAM2 model family published by bowang-lab (Hugging Face ``wanglab/MedSAM2``), by name.

Each entry names its file in that repository, its architecture, what it was trained for and its approximate
size (float32 weights: parameter count x 4 bytes). The exact size and the SHA256 are not written here: they
are read from the file's Git LFS pointer when it is downloaded (:mod:`.weights`), so a download is verified
against what is published. Torch-free, like :mod:`.weights`: the Slicer module lists models before PyTorch
is installed. Which network a file holds is recognised from its keys when it is loaded
(``model/checkpoint.py``); ``architecture`` here is for people choosing a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from .weights import CHECKPOINT_FILENAME, CHECKPOINT_REPOSITORY, WeightsSource, cache_directory

HIERA_T = "SAM 2.1 Hiera-T, 512 px"
EFFICIENTTAM_TI = "EfficientTAM-Ti (ViT), 512 px"
EFFICIENTTAM_S = "EfficientTAM-S (ViT), 512 px"


@dataclass(frozen=True)
class CatalogueModel:
    name: str  # what --model takes
    filename: str  # in the Hugging Face repository
    architecture: str
    trained_for: str
    approximate_mb: int

    def source(self, base_url: str = "https://huggingface.co") -> WeightsSource:
        return WeightsSource(base_url=base_url, repository=CHECKPOINT_REPOSITORY, filename=self.filename)

    def path(self, folder: Optional[Path] = None) -> Path:
        """Where the downloaded file lives: the weights cache folder unless ``folder`` is given."""
        return Path(folder if folder is not None else cache_directory()) / self.filename

    def is_downloaded(self, folder: Optional[Path] = None) -> bool:
        return self.path(folder).is_file()


# Sizes: 38,962,498 values for Hiera-T 512, 17,866,274 for EfficientTAM-Ti, 34,056,098 for -S (state_dicts of the
# official configs' models).
CATALOGUE: Tuple[CatalogueModel, ...] = (
    CatalogueModel("latest", CHECKPOINT_FILENAME, HIERA_T,
                   "the current general model: CT, MRI, PET, ultrasound and endoscopy; organs and lesions", 156),
    CatalogueModel("2411", "MedSAM2_2411.pt", HIERA_T, "the earlier general model (release of November 2024)", 156),
    CatalogueModel("ct-lesion", "MedSAM2_CTLesion.pt", HIERA_T, "lesions on CT (DeepLesion annotation study)", 156),
    CatalogueModel("mri-liver-lesion", "MedSAM2_MRI_LiverLesion.pt", HIERA_T,
                   "liver lesions on MRI (LLD-MMRI annotation study)", 156),
    CatalogueModel("us-heart", "MedSAM2_US_Heart.pt", HIERA_T, "the heart on echocardiography (ultrasound video)", 156),
    CatalogueModel("efficient-tiny", "eff_medsam2_tiny_FLARE25_RECIST_baseline.pt", EFFICIENTTAM_TI,
                   "Efficient MedSAM2 for CPU-only machines: CT lesions from a RECIST box (FLARE 2025 baseline)", 71),
    CatalogueModel("efficient-small", "eff_medsam2_small_FLARE25_RECIST_baseline.pt", EFFICIENTTAM_S,
                   "Efficient MedSAM2, larger: CT lesions from a RECIST box (FLARE 2025 baseline)", 136),
)
DEFAULT_MODEL = CATALOGUE[0]
MODEL_NAMES = tuple(model.name for model in CATALOGUE)


class UnknownModelError(ValueError):
    """A model name that is not in the catalogue."""


def catalogue_model(name: str) -> CatalogueModel:
    for model in CATALOGUE:
        if model.name == name:
            return model
    raise UnknownModelError(f"There is no MedSAM2 model named {name!r}; the models are {', '.join(MODEL_NAMES)} "
                            "(medsam2 models lists them).")


def model_of_file(path: Path) -> Optional[CatalogueModel]:
    """The catalogue entry whose file name ``path`` has, if any."""
    return next((model for model in CATALOGUE if model.filename == Path(path).name), None)
