from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base


class VersionArtifact(Base):
    """A private file a version keeps for the next job (the method's ``private_artifacts``:
    noise-free weights, Gram sums, ...). Never served; purge deletes every one of a revoked
    version. ``model_versions.private_uri`` mirrors the first (the noise-free weights)."""

    __tablename__ = "version_artifacts"

    version_id: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(48), primary_key=True)
    uri: Mapped[str] = mapped_column(String(500), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
