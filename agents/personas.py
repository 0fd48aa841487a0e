"""The persona catalog: a YAML file of experts, looked up by id."""

from __future__ import annotations

import glob
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from common.protocol import AgentSkill

DEFAULT_CATALOG = Path(__file__).with_name("personas.yaml")


class Persona(BaseModel):
    id: str
    name: str
    description: str
    port: int = Field(ge=1, le=65535)
    system_prompt: str
    skills: list[AgentSkill] = []
    knowledge: list[str] = Field([], description="Globs of documents (Markdown, text, HTML, PDF) the expert knows, "
                                 "relative to the catalog file; ingested at start-up when they changed.")
    remote_model: str | None = Field(
        None, description="With REMOTE_URL: the model this persona asks the server for instead of REMOTE_MODEL, e.g. "
        "its own fine-tune served as a LoRA adapter on the shared base (a name from vLLM's --lora-modules).")
    catalog_dir: Path = Field(DEFAULT_CATALOG.parent, exclude=True)

    def knowledge_files(self) -> list[Path]:
        """The files the knowledge globs name, in a stable order."""
        found: set[Path] = set()
        for pattern in self.knowledge:
            base = Path(pattern) if Path(pattern).is_absolute() else self.catalog_dir / pattern
            if base.is_dir():  # a folder: every file in it, at any depth
                base = base / "**" / "*"
            found |= {Path(p) for p in glob.glob(str(base), recursive=True) if Path(p).is_file()}
        return sorted(found)


class UnknownPersona(LookupError):
    pass


def load_catalog(path: Path | None = None) -> dict[str, Persona]:
    """Read and validate a catalog; a malformed entry fails with the entry's id and what is wrong."""
    path = path or DEFAULT_CATALOG
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a persona catalog is a mapping of id -> persona")
    catalog = {}
    for pid, entry in raw.items():
        try:
            catalog[pid] = Persona.model_validate({"id": pid, **entry, "catalog_dir": Path(path).parent})
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"{path}: persona {pid!r} is invalid: {exc}") from exc
    return catalog


def get_persona(persona_id: str, path: Path | None = None) -> Persona:
    catalog = load_catalog(path)
    if persona_id not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        raise UnknownPersona(f"unknown persona {persona_id!r}; known personas: {known}")
    return catalog[persona_id]
