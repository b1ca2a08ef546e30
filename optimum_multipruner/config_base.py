"""`ConfigMixin`: what every configuration of the library shares (as PEFT's `PeftConfigMixin`): `to_dict` /
`from_dict`, `save_pretrained` / `from_pretrained` of one JSON file, the refusal of unknown fields, and a type tag
(`config_type`) that names the class in the saved file; `option`, a field with what the command line shows of it.

Standard library only at module level: `optimum-cli` builds its options from these dataclasses at every start-up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, ClassVar, Optional, TypeVar, Union

CONFIG_TYPE_KEY = "config_type"  # the type tag in a saved config file (never in `to_dict`, so records keep their bytes)

Config = TypeVar("Config", bound="ConfigMixin")
logger = logging.getLogger(__name__)


def option(default: Any = dataclasses.MISSING, help: str = "", advanced: bool = False,
           choices: Optional[tuple[Any, ...]] = None, aliases: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A config field with what the command line shows of it: `help` (one line), `choices`, `advanced` for
    implementation knobs a user never needs (settable, but listed apart in `--help`), and further flags (`aliases`,
    e.g. the name optimum-intel's CLI gives the same setting)."""
    metadata = {"help": help, "advanced": advanced, "choices": choices, "aliases": aliases}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


class ConfigMixin:
    """Base of the library's configuration dataclasses.

    Subclasses set `CONFIG_NAME` (the file `save_pretrained` writes) and may override `upgrade_dict` (keys of older
    versions) and `to_dict` (JSON-friendly values); `from_dict` refuses unknown fields and a file of another config
    type, and turns wrong value types into a `ValueError`.
    """

    CONFIG_NAME: ClassVar[str]
    SORT_JSON_KEYS: ClassVar[bool] = True  # the key order of the saved file

    @classmethod
    def config_type(cls) -> str:
        """The type tag of the saved file: the class name."""
        return cls.__name__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def upgrade_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`data` with the keys of earlier versions mapped to this version's (none by default)."""
        return data

    @classmethod
    def fields_from_dict(cls, data: Any) -> dict[str, Any]:
        """The constructor's keyword arguments from `to_dict()` of this or an earlier version (or a saved file, type
        tag included); `ValueError` on anything else, naming the unknown fields."""
        if not isinstance(data, dict):
            raise ValueError(f"A {cls.__name__} must be a JSON object, got {type(data).__name__}.")
        tag = data.get(CONFIG_TYPE_KEY, cls.config_type())
        if tag != cls.config_type():
            raise ValueError(f"This is a {tag}, not a {cls.__name__}; give a {cls.__name__} file.")
        data = cls.upgrade_dict({key: value for key, value in data.items() if key != CONFIG_TYPE_KEY})
        check_known_fields(cls, data)
        return data

    @classmethod
    def from_dict(cls: type[Config], data: Any) -> Config:
        fields = cls.fields_from_dict(data)
        try:
            return cls(**fields)
        except TypeError as error:  # wrong value types from a hand-edited file
            raise ValueError(f"Invalid {cls.__name__}: {error}") from error

    @classmethod
    def from_dict_leniently(cls: type[Config], data: Any, where: str) -> Config:
        """[`from_dict`] of a config stored in a file this package wrote long ago (e.g. a pruning record's): the fields
        this version no longer has, at any depth, are dropped with a warning naming `where`, instead of refused."""
        if isinstance(data, dict):
            data = cls.upgrade_dict({key: value for key, value in data.items() if key != CONFIG_TYPE_KEY})
            data = _known_fields(cls, data, where, cls.__name__)
        return cls.from_dict(data)

    def to_json_string(self) -> str:
        """The saved file's text: the type tag and `to_dict()`."""
        data = {CONFIG_TYPE_KEY: self.config_type(), **self.to_dict()}
        return json.dumps(data, indent=2, sort_keys=self.SORT_JSON_KEYS) + "\n"

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> str:
        """Write `CONFIG_NAME` into `save_directory` (atomically) and return its path."""
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) is a file, not a directory.")
        from .utils import atomic_write_text  # here: this module imports only the standard library at module level

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls: type[Config], path: Union[str, os.PathLike]) -> Config:
        """Load from a directory holding `CONFIG_NAME`, or from a JSON file."""
        from .utils import read_json  # here: this module imports only the standard library at module level

        file = os.path.join(path, cls.CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {cls.__name__} found at {file}.")
        return cls.from_dict(read_json(file))


def _known_fields(cls: type, data: dict[str, Any], where: str, path: str) -> dict[str, Any]:
    """`data` without the keys that are no field of `cls` (each dropped with a warning), nested configs alike."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = {}
    for key, value in data.items():
        if key not in fields:
            logger.warning("%s: ignoring `%s.%s`, which this version no longer has.", where, path, key)
            continue
        nested = fields[key].default_factory
        if nested is not dataclasses.MISSING and isinstance(nested, type) and issubclass(nested, ConfigMixin) \
                and isinstance(value, dict):
            value = _known_fields(nested, value, where, f"{path}.{key}")
        known[key] = value
    return known


def check_known_fields(cls: type, data: dict[str, Any], what: Optional[str] = None) -> None:
    """`ValueError` naming the keys of `data` that are no field of the dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"Unknown {what or cls.__name__} field(s) {unknown}; known fields: {sorted(names)}.")


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def is_number(value: Any) -> bool:
    """A real number, not a bool nor NaN."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
