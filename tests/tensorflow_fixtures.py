"""Small TensorFlow models for the tensorflow backend tests: a SavedModel (add/sub over a
batch, a second signature) and a GraphDef of string ops."""

from __future__ import annotations

from pathlib import Path


def save_add_sub_savedmodel(path: Path) -> Path:
    """Signatures serving_default (INPUT0, INPUT1 [-1, 4] fp32 -> OUTPUT0 sum, OUTPUT1
    difference) and 'scaled' (X [-1, 4] -> Y = 3 * X)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, 4], tf.float32)

    class AddSub(tf.Module):
        @tf.function(input_signature=[spec, spec])
        @tf.autograph.experimental.do_not_convert
        def serve(self, INPUT0, INPUT1):  # noqa: N803 (signature keys are the tensor names)
            return {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}

        @tf.function(input_signature=[spec])
        @tf.autograph.experimental.do_not_convert
        def scaled(self, X):  # noqa: N803
            return {"Y": 3.0 * X}

    module = AddSub()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve,
                                                       "scaled": module.scaled})
    return path


def save_upper_graphdef(path: Path) -> Path:
    """TEXT [-1, 1] string -> UPPER (upper-cased), LEN (byte lengths, int32)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        text = tf.compat.v1.placeholder(tf.string, [None, 1], name="TEXT")
        tf.strings.upper(text, name="UPPER")
        tf.strings.length(text, name="LEN")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path
