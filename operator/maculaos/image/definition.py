"""The image definition (image-build/maculaos.yaml) and its extensions (`--extend custom.yaml`, seed
4.14.3): pydantic models, so a typo or a bad value fails before any download, naming the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self, cast

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from maculaos.errors import MaculaosError

# The architectures an image can be built for (Debian's names). A foreign one is built under emulation
# (qemu-user-static and binfmt_misc: maculaos.image.emulation).
ARCHES = ("amd64", "arm64")
Arch = Literal["amd64", "arm64"]
# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alnum. An entry
# may end in an architecture restriction as in Build-Depends, "grub-pc-bin [amd64]": only in those builds.
DebianPackage = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+( \[[a-z0-9 ]+\])?$",
                                                 max_length=100)]
ImagePath = Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$", max_length=1024)]
# What a kernel command line word may hold here: no quoting, no newline.
CmdlineWord = re.compile(r"^[A-Za-z0-9_.,:/=+@-]+$")


class DefinitionError(MaculaosError, ValueError):
    """A definition or an extension that cannot be built; the message names the file and the field."""


def _check_image_path(path: str) -> str:
    parts = path.split("/")
    if ".." in parts or path.endswith("/"):
        raise ValueError(f"{path!r} must be an absolute file path without '..'")
    return path


def _check_image_files(files: dict[str, str]) -> dict[str, str]:
    for path in files:
        _check_image_path(path)
    return files


def split_restriction(entry: str) -> tuple[str, list[str]]:
    """"grub-pc-bin [amd64]" -> ("grub-pc-bin", ["amd64"]); an entry without one -> (entry, [])."""
    name, _, rest = entry.partition(" [")
    return name, rest.rstrip("]").split() if rest else []


def _check_restriction(entry: str, where: str = "") -> None:
    _, arches = split_restriction(entry)
    unknown = [a for a in arches if a not in ARCHES]
    if unknown:
        raise ValueError(f"{where}{entry!r}: {unknown[0]!r} is not an architecture MaculaOS builds "
                         f"({', '.join(ARCHES)})")


def _check_firmware_pattern(pattern: str) -> str:
    if pattern.startswith("/") or ".." in pattern.split("/"):
        raise ValueError(f"{pattern!r} must be a path relative to /usr/lib/firmware, without '..'")
    return pattern


# A glob over paths relative to /usr/lib/firmware (fnmatch: `*` also matches `/`), as modinfo names them.
FirmwarePattern = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.,*?\[\]/+-]+$", max_length=200),
                            AfterValidator(_check_firmware_pattern)]


class FirmwareExtra(BaseModel):
    """An extension's firmware: more patterns to keep (an extension only adds)."""

    model_config = ConfigDict(extra="forbid")

    keep: list[FirmwarePattern] = Field(default_factory=list, max_length=200)


class Firmware(BaseModel):
    """What the build keeps of /usr/lib/firmware (maculaos.image.firmware): the files the image's kernel
    modules name, plus `keep`, less `drop`; a file matching both is kept."""

    model_config = ConfigDict(extra="forbid")

    select: Literal["modules", "all"] = Field("modules", description="`modules`: only what a module names "
                                              "(and keep); `all`: every file the packages install")
    keep: list[FirmwarePattern] = Field(default_factory=list, max_length=500)
    drop: list[FirmwarePattern] = Field(default_factory=list, max_length=500)
    initramfs_only: list[FirmwarePattern] = Field(default_factory=list, max_length=50, description=(
        "kept for the initramfs (early microcode), then removed from the root once it is built"))


# Files written into the image (path: content); the paths are checked as a whole, so errors name `files`.
ImageFiles = Annotated[dict[ImagePath, str], AfterValidator(_check_image_files)]


class Extension(BaseModel):
    """A custom build on top of the definition (seed 4.14.3): only adds, never removes."""

    model_config = ConfigDict(extra="forbid")

    packages: list[DebianPackage] = Field(default_factory=list, max_length=500)
    overlays: list[Path] = Field(default_factory=list, max_length=20)
    files: ImageFiles = Field(default_factory=dict, max_length=200)
    firstboot: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=100)
    firmware: FirmwareExtra = Field(default_factory=FirmwareExtra)

    @field_validator("packages")
    @classmethod
    def _package_arches(cls, value: list[str]) -> list[str]:
        for entry in value:
            _check_restriction(entry)
        return value


class DiskSizes(BaseModel):
    """Partition sizes of the raw disk image (GPT: bios_grub 1 MiB, ESP, rootfs-A, rootfs-B, data)."""

    model_config = ConfigDict(extra="forbid")

    esp_mib: int = Field(128, ge=64, le=2048, description="GRUB, its environment, a kernel and initrd per slot")
    slot_mib: int = Field(1024, ge=256, le=16384, description="each rootfs slot: room for later, larger versions")
    data_mib: int = Field(512, ge=64, le=65536, description="the data partition in the image (an install "
                                                              "gives it the rest of the disk)")


class ImageDefinition(BaseModel):
    """image-build/maculaos.yaml: everything that decides what goes into the image."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")]
    version: Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")]
    arch: Arch = Field(description="the default architecture; `maculaos image build --arch` picks another")
    suite: Annotated[str, StringConstraints(pattern=r"^trixie$")]
    mirrors: list[Annotated[str, StringConstraints(pattern=r"^(https?|file)://\S+( [a-z0-9-]+)?$")]] = Field(
        min_length=1, max_length=10)
    components: list[Annotated[str, StringConstraints(pattern=r"^[a-z-]+$")]] = Field(min_length=1)
    packages_by_profile: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$")],
                              list[DebianPackage]] = Field(alias="packages", min_length=1)
    profiles: list[str] = Field(min_length=1)
    python: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(default_factory=list)
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
    kernel_cmdline: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    overlays: list[Path] = Field(default_factory=list, max_length=20)
    files: ImageFiles = Field(default_factory=dict, max_length=500)
    firstboot: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=100)
    disk: DiskSizes = Field(default_factory=DiskSizes)
    firmware: Firmware = Field(default_factory=Firmware)
    extra_packages: list[DebianPackage] = Field(default_factory=list, description="added by extensions")
    extensions: list[Path] = Field(default_factory=list, description="extension files merged in, in order")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("kernel_cmdline")
    @classmethod
    def _cmdline(cls, value: str) -> str:
        bad = [w for w in value.split() if not CmdlineWord.match(w)]
        if bad:
            raise ValueError(f"word {bad[0]!r} has characters a kernel command line should not carry")
        if "boot=macula" not in value.split():
            raise ValueError("must contain boot=macula (the MaculaOS initramfs script)")
        return value

    @field_validator("packages_by_profile")
    @classmethod
    def _package_arches(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for profile, names in value.items():
            for entry in names:
                _check_restriction(entry, f"{profile}: ")
        return value

    def model_post_init(self, context: Any, /) -> None:
        unknown = [p for p in self.profiles if p not in self.packages_by_profile]
        if unknown:
            raise ValueError(f"profiles: {unknown[0]!r} is not a key of packages "
                             f"({', '.join(self.packages_by_profile)})")

    def for_arch(self, arch: str) -> Self:
        """This definition built for another architecture (`--arch`)."""
        if arch not in ARCHES:
            raise DefinitionError(f"--arch: {arch!r} is not one of {', '.join(ARCHES)}")
        return self.model_copy(update={"arch": cast(Arch, arch)})

    def select(self, profiles: list[str]) -> Self:
        """This definition with another choice of profiles (`--profiles`)."""
        unknown = [p for p in profiles if p not in self.packages_by_profile]
        if unknown:
            raise DefinitionError(f"--profiles: {unknown[0]!r} is not one of {', '.join(self.packages_by_profile)}")
        return self.model_copy(update={"profiles": profiles})

    def extended(self, ext: Extension, source: Path) -> Self:
        """This definition with an extension merged on top: lists appended, files added (an extension may
        not silently replace a file another part wrote)."""
        clash = sorted(set(ext.files) & set(self.files))
        if clash:
            raise DefinitionError(f"{source}: files: {clash[0]} is already written by the definition")
        return self.model_copy(update={
            "extra_packages": self.extra_packages + ext.packages,
            "overlays": self.overlays + ext.overlays,
            "files": self.files | ext.files,
            "firstboot": self.firstboot + ext.firstboot,
            "firmware": self.firmware.model_copy(update={"keep": self.firmware.keep + ext.firmware.keep}),
            "extensions": self.extensions + [source],
        })

    def debian_packages(self) -> list[str]:
        """Every Debian package to install for this architecture: the chosen profiles, then the extensions'
        packages; an entry restricted to other architectures ("name [arm64]") is left out."""
        entries = [p for prof in self.profiles for p in self.packages_by_profile[prof]] + self.extra_packages
        names = [name for name, arches in map(split_restriction, entries) if not arches or self.arch in arches]
        return list(dict.fromkeys(names))

    def artifact(self, fmt: str) -> str:
        """The file name of one output (seed 8.2): macula-os-{version}-{arch}.{format}."""
        return f"{self.name}-{self.version}-{self.arch}.{fmt}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DefinitionError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}: must be a mapping of fields")
    return data


def _explain(path: Path, exc: ValidationError) -> DefinitionError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return DefinitionError(f"{path}: {field}: {err['msg']}")


def _resolve_overlays(model: Extension | ImageDefinition, source: Path) -> list[Path]:
    """Overlay folders are relative to the file that names them."""
    dirs = [(source.parent / p).resolve() for p in model.overlays]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise DefinitionError(f"{source}: overlays: {missing[0]} is not a folder")
    return dirs


def load_definition(path: Path, extensions: list[Path] | None = None) -> ImageDefinition:
    """Read the definition and merge each extension on top, overlay folders made absolute."""
    try:
        definition = ImageDefinition.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise _explain(path, exc) from exc
    definition = definition.model_copy(update={"overlays": _resolve_overlays(definition, path)})
    for ext_path in extensions or []:
        try:
            ext = Extension.model_validate(_read_yaml(ext_path))
        except ValidationError as exc:
            raise _explain(ext_path, exc) from exc
        ext = ext.model_copy(update={"overlays": _resolve_overlays(ext, ext_path)})
        definition = definition.extended(ext, ext_path.resolve())
    return definition
