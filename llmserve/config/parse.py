"""config.pbtxt / JSON <-> the ModelConfig protobuf, with protobuf's own text_format and
json_format. Parse errors become one-line ConfigErrors naming file, line and problem;
JSON rendering matches Triton's config endpoint (snake_case, defaults printed, int64s as
numbers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.errors import ConfigError

ModelConfig = mc.ModelConfig

_PLACEHOLDER = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_INT64_TYPES = {
    pb_descriptor.FieldDescriptor.TYPE_INT64,
    pb_descriptor.FieldDescriptor.TYPE_UINT64,
    pb_descriptor.FieldDescriptor.TYPE_SINT64,
    pb_descriptor.FieldDescriptor.TYPE_FIXED64,
    pb_descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def parse_config_text(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse protobuf text format into a ModelConfig; `source` names the file in errors."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ConfigError(_describe_parse_error(e, text, source)) from None
    return config


def parse_config_file(path: Path) -> mc.ModelConfig:
    """Read and parse a config.pbtxt file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the model configuration: {e.strerror}") from None
    return parse_config_text(text, str(path))


def parse_config_json(text: str | bytes | dict, source: str = "config JSON") -> mc.ModelConfig:
    """Parse a JSON model configuration (a load request's override, Triton's config JSON)."""
    config = mc.ModelConfig()
    try:
        data = json.loads(text) if isinstance(text, (str, bytes)) else text
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the model configuration must be a JSON object")
        json_format.ParseDict(data, config)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: invalid JSON at line {e.lineno} column {e.colno}: "
                          f"{e.msg}") from None
    except json_format.ParseError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config


def config_to_json_dict(config: mc.ModelConfig, *, int64_as_string: bool = False
                        ) -> dict[str, Any]:
    """The config as Triton's config endpoint shows it: proto field names, fields with
    default values printed, int64 fields (dims, shapes, microseconds) as JSON numbers
    (Triton's ModelConfigToJson undoes protobuf's int64-as-string; int64_as_string=True
    keeps protobuf's form, as tritonclient's gRPC get_model_config(as_json=True) shows)."""
    data = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    if not int64_as_string:
        _fix_int64(config.DESCRIPTOR, data)
    return data


def config_to_json(config: mc.ModelConfig) -> str:
    """config_to_json_dict as a compact JSON string (what Python models get as
    args['model_config'])."""
    return json.dumps(config_to_json_dict(config), separators=(",", ":"))


def config_to_text(config: mc.ModelConfig) -> str:
    """The config in protobuf text format (what a config.pbtxt would hold)."""
    return text_format.MessageToString(config)


def _fix_int64(desc: pb_descriptor.Descriptor, data: dict[str, Any]) -> None:
    """protobuf's JSON writes int64 as strings; Triton fixes them to numbers. Keys are put
    back in declaration order, as Triton prints them."""
    for field in desc.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for key, item in list(value.items()):
                    if value_field.message_type is not None:
                        _fix_int64(value_field.message_type, item)
                    elif value_field.type in _INT64_TYPES:
                        value[key] = int(item)
            elif isinstance(value, list):
                for item in value:
                    _fix_int64(field.message_type, item)
            else:
                _fix_int64(field.message_type, value)
        elif field.type in _INT64_TYPES:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    ordered = {f.name: data[f.name] for f in desc.fields if f.name in data}
    data.clear()
    data.update(ordered)


def _describe_parse_error(e: text_format.ParseError, text: str, source: str) -> str:
    line, column = e.GetLine(), e.GetColumn()
    problem = str(e)
    # str(e) starts with "line:column : " when the position is known.
    prefix = f"{line}:{column} : "
    if line is not None and problem.startswith(prefix):
        problem = problem[len(prefix):]
    where = f"{source}:{line}:{column}" if line is not None else source
    message = f"{where}: {problem}"
    if line is not None:
        lines = text.splitlines()
        if 0 < line <= len(lines):
            found = _PLACEHOLDER.search(lines[line - 1])
            if found and "$" in lines[line - 1]:
                message += (f" (unfilled template placeholder '{found.group(0)}': fill it with "
                            "tools/fill_template.py)")
    return message
