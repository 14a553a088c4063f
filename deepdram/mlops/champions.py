"""The registered champion models of a space's design procedure, downloaded and loaded by role."""

from __future__ import annotations

import tempfile
from pathlib import Path

from deepdram.errors import DeepdramError
from deepdram.mlops.catalogue import CHAMPION, DESIGN_ROLES


def champion_files(dest: Path, space: str = "lattice", alias: str = CHAMPION) -> tuple[dict[str, Path], dict[str, int]]:
    """Download the .keras files of the space's `alias` models into dest; (paths, versions) by role.

    Fails with a clear message when a model is not registered or has no such alias.
    """
    from deepdram.mlops import registry, tracking

    uri = tracking.configure()
    import mlflow.artifacts

    c = tracking.client()
    paths, versions = {}, {}
    for role, name in DESIGN_ROLES.get(space, {}).items():  # a space without surrogates needs none
        if registry._registered(c, name) is None:
            raise DeepdramError(f"no registered model {name!r} in {uri}: run `dvc repro` (or `make repro`) "
                                "to train and register it")
        mv = registry._by_alias(c, name, alias)
        if mv is None:
            raise DeepdramError(f"model {name!r} has no {alias}: run `dvc repro` or "
                                f"`deepdram promote {name} --version N`")
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{alias}",
                                                         dst_path=str(dest / role)))
        found = sorted((local / "artifacts").glob("*.keras"))
        if len(found) != 1:
            raise DeepdramError(f"{name} version {mv.version}: expected one .keras artifact, found {len(found)}")
        paths[role], versions[role] = found[0], int(mv.version)
    return paths, versions


def load_champions(space: str = "lattice", alias: str = CHAMPION):
    """The champion surrogates of a space from the registry (`models:/NAME@champion`)."""
    from deepdram.design.pipeline import load_surrogates
    from deepdram.spaces.registry import get

    with tempfile.TemporaryDirectory(prefix="deepdram-champions-") as tmp:
        paths, versions = champion_files(Path(tmp), space, alias)
        s = load_surrogates(paths, get(space))
    s.versions = versions
    return s
