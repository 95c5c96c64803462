"""Loads a TensorFlow model into a session as Triton's TensorFlow backend does: a SavedModel
through its signature (TF_GRAPH_TAG, TF_SIGNATURE_DEF, falling back to the first serving
signature), a GraphDef with every Placeholder as a possible input and every node as a
possible output. Names are the signature's keys or the graph's node names."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmserve.core.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# TensorFlow dtype names -> config data types (Triton's TensorFlow backend's table)
TF_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}
_IGNORED_SIGNATURES = ("__saved_model_init_op", "__saved_model_train_op")


@dataclass(slots=True)
class TfTensor:
    """One input or output: its config name, the graph tensor it feeds or fetches, and
    (SavedModel only) its data type and shape, -1 for unknown dimensions."""

    name: str
    tensor: str
    data_type: str | None = None
    shape: list[int] | None = None


@dataclass(slots=True)
class TfModel:
    session: Any
    inputs: dict[str, TfTensor] = field(default_factory=dict)
    outputs: dict[str, TfTensor] = field(default_factory=dict)
    is_graphdef: bool = False


@dataclass(slots=True)
class SessionSettings:
    intra_threads: int = 0
    inter_threads: int = 0
    per_session_threads: bool = False
    graph_tag: str = ""
    signature_def: str = ""


def open_model(path: Path, model_name: str, settings: SessionSettings,
               init_ops: list[str] | None = None) -> TfModel:
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=settings.intra_threads,
        inter_op_parallelism_threads=settings.inter_threads,
        use_per_session_threads=settings.per_session_threads)
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        if path.is_dir():
            model = _open_saved_model(tf, graph, session, path, model_name, settings)
        else:
            model = _open_graphdef(tf, graph, session, path, model_name)
        for op in init_ops or []:
            session.run(graph.get_operation_by_name(op))
    except (InvalidArgument, Unavailable):
        session.close()
        raise
    except Exception as e:
        session.close()
        raise Unavailable(f"unable to load model '{model_name}': TensorFlow cannot load "
                          f"{path}: {e}") from None
    return model


def _open_saved_model(tf: Any, graph: Any, session: Any, path: Path, model_name: str,
                      settings: SessionSettings) -> TfModel:
    tags = [settings.graph_tag or "serve"]
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(session, tags, str(path))
    wanted = settings.signature_def or "serving_default"
    signatures = meta.signature_def
    if wanted not in signatures and not settings.signature_def:
        others = [k for k in signatures if k not in _IGNORED_SIGNATURES]
        if others:
            log.warning("model '%s': unable to find serving signature '%s', using signature "
                        "'%s'", model_name, wanted, others[0])
            wanted = others[0]
    if wanted not in signatures:
        raise Unavailable(f"unable to load model '{model_name}', expected '{wanted}' signature")
    sig = signatures[wanted]
    model = TfModel(session)
    for target, infos in ((model.inputs, sig.inputs), (model.outputs, sig.outputs)):
        for key, info in infos.items():
            dtype = tf.dtypes.as_dtype(info.dtype).name
            if dtype not in TF_TYPES:
                raise Unavailable(f"unable to process tensor '{key}' for '{model_name}', "
                                  f"unsupported datatype '{dtype}'")
            shape = None if info.tensor_shape.unknown_rank else \
                [int(d.size) for d in info.tensor_shape.dim]
            target[key] = TfTensor(key, info.name, TF_TYPES[dtype], shape)
    return model


def _open_graphdef(tf: Any, graph: Any, session: Any, path: Path, model_name: str) -> TfModel:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    model = TfModel(session, is_graphdef=True)
    for node in graph_def.node:
        target = model.inputs if node.op == "Placeholder" else model.outputs
        target[node.name] = TfTensor(node.name, f"{node.name}:0")
    return model


def read_init_ops(model_dir: Path, version: int, filename: str, model_name: str) -> list[str]:
    """TF_INIT_OPS_FILE: the version folder's copy wins over the model folder's."""
    for folder in (model_dir / str(version), model_dir):
        path = folder / filename
        if path.is_file():
            try:
                ops = json.loads(path.read_text())["init_ops"]
            except (ValueError, KeyError, TypeError) as e:
                raise InvalidArgument(f"model '{model_name}': {path} must be a JSON object "
                                      f"with a list 'init_ops': {e}") from None
            return [str(op) for op in ops]
    raise InvalidArgument(f"model '{model_name}': TF_INIT_OPS_FILE '{filename}' not found in "
                          "the version folder or the model folder")
