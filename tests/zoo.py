"""Where the shared model-zoo configs are: $ESEGETA_MODEL_ZOO, <repo>/shared/model-zoo or
<repo>/../shared/model-zoo (CI lays shared/ beside the clone)."""

import os
from pathlib import Path


def find_zoo() -> Path:
    repo = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("ESEGETA_MODEL_ZOO", ""), repo / "shared" / "model-zoo", repo.parent / "shared" / "model-zoo"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), Path(candidates[1]))


ZOO = find_zoo()
