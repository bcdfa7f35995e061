"""Keras and TensorFlow models as ONNX files, and Keras' own Grad-CAM of them: the ONNX source's tests compare against
these. Runs in .venv-tf (`make tf`; TensorFlow, Keras 3, tf2onnx, onnx), never in onnxcam's .venv.

    python tools/keras_models.py xception OUT_DIR     # OUT_DIR/xception.keras, .onnx (Keras' own ONNX export)
    python tools/keras_models.py savedmodel OUT_DIR   # OUT_DIR/mobilenetv2.keras, a SavedModel, .onnx (tf2onnx)
    python tools/keras_models.py reference MODEL.keras INPUTS.npy OUT.npz --layer NAME [--targets TARGETS.npy]

Both models are Keras applications with seeded random weights (keras.utils.set_random_seed(0); nothing downloads),
their batch normalisations' statistics calibrated on seeded noise images and their classifier's bias seeded (see
`lifelike`).
`reference` follows keras.io's Grad-CAM example (make_gradcam_heatmap: tf.GradientTape on the model with its
softmax removed) on a float64 copy of the model (same weights, cast), per image, without the example's division by
the maximum; OUT.npz holds:

    probabilities          [N, K]      the float64 copy's softmax of the logits (its model.predict)
    probabilities_float32  [N, K]      the model as saved (float32): model.predict
    logits                 [N, K]      the scores before the softmax (last layer's activation set to None)
    classes                [N]         TARGETS, or each image's top class
    activations            [N, h, w, C]  the layer's output (NHWC)
    gradients              [N, h, w, C]  d logits[n, classes[n]] / d activations
    gradcam                [N, h, w]   ReLU(sum over C of activations * gradients' mean over h, w)
    input_gradients        [N, H, W, 3]  d logits[n, classes[n]] / d inputs (NHWC)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
os.environ["KERAS_BACKEND"] = "tensorflow"  # Keras' ONNX export of a TensorFlow model goes through tf2onnx

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 0
OPSET = 18


def seeded() -> None:
    """The same weights and the same numbers on every run."""
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


def describe(path: Path, layer: str) -> None:
    """Prints the ONNX file's inputs and outputs, its op histogram, and the tensors named after `layer`."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}

    def shape(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    print(f"{path.name}: opset {OPSET}, {len(graph.node)} nodes")
    for kind, values in (("input", [v for v in graph.input if v.name not in weights]), ("output", graph.output)):
        for value in values:
            dtype = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            print(f"  {kind} {value.name!r} {shape(value)} {dtype}")
    print("  ops: " + ", ".join(f"{op} {n}" for op, n in sorted(Counter(n.op_type for n in graph.node).items())))
    print(f"  last op: {graph.node[-1].op_type}")
    named = [out for node in graph.node for out in node.output if layer in out]
    print(f"  tensors named after {layer}: {named}")


def lifelike(model: keras.Model) -> keras.Model:
    """Gives the seeded network what training would have: every BatchNormalization's moving statistics those of a
    seeded batch of smooth noise images (one forward in training mode, momentum 0), and the classifier a seeded bias.
    Freshly initialised (mean 0, variance 1), the layers pass the signal on unscaled and it fades layer after layer:
    Xception's logits come out about 1e-4 and its top class is a matter of rounding; calibrated, every layer's output
    is of the order of 1. With its bias at zero, the converters leave the classifier's Add out of the ONNX graph."""
    rng = np.random.default_rng(SEED)
    size = model.input_shape[1:3]
    coarse = rng.uniform(-1, 1, (8, size[0] // 16, size[1] // 16, 3)).astype(np.float32)
    images = tf.image.resize(coarse, size, method="bicubic")
    norms = {layer: layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in norms.items():
        layer.momentum = momentum  # the saved configuration stays the application's own
    classifier = model.layers[-1]
    classifier.bias.assign(rng.normal(0, 0.1, classifier.bias.shape).astype(np.float32))
    return model


def xception(out_dir: Path) -> None:
    """seed 002's model: Xception (299x299, softmax head), exported to ONNX by Keras itself."""
    seeded()
    model = lifelike(keras.applications.Xception(weights=None))  # called once: Keras exports only such a model
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "xception.keras")
    model.export(str(out_dir / "xception.onnx"), format="onnx", opset_version=OPSET, verbose=False)
    describe(out_dir / "xception.onnx", "block14_sepconv2_act")


def savedmodel(out_dir: Path) -> None:
    """MobileNetV2 (224x224; Conv, depthwise Conv, ReLU6, Add, global pooling, Dense, softmax) through the other route:
    a TensorFlow SavedModel, converted by tf2onnx's command line."""
    seeded()
    model = lifelike(keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "mobilenetv2.keras")
    saved = out_dir / "mobilenetv2_savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
               "--output", str(out_dir / "mobilenetv2.onnx"), "--opset", str(OPSET)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"keras_models: tf2onnx failed ({done.returncode}):\n" + "\n".join(done.stderr.splitlines()[-20:]))
    describe(out_dir / "mobilenetv2.onnx", "out_relu")


def float64_copy(model: keras.Model) -> keras.Model:
    """The same functional model, every layer (input included) in float64, with the same weights cast."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float64", name=model.inputs[0].name)

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float64"})

    copy = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    copy.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return copy


def reference(model_path: Path, inputs_path: Path, out_path: Path, layer: str, targets_path: Path | None) -> None:
    seeded()
    saved = keras.models.load_model(model_path, compile=False)
    images = np.load(inputs_path)
    if images.ndim != 4 or images.shape[1:] != tuple(saved.input_shape[1:]):
        sys.exit(f"keras_models: {inputs_path} holds {images.shape}, {model_path.name} takes "
                 f"[N, {', '.join(map(str, saved.input_shape[1:]))}] (NHWC, preprocessed)")
    targets = None if targets_path is None else np.load(targets_path).astype(np.int64)
    if targets is not None and targets.shape != (len(images),):
        sys.exit(f"keras_models: {targets_path} holds {targets.shape}, not one class for each of the {len(images)} "
                 "images")
    probabilities_float32 = saved.predict(images.astype(np.float32), verbose=0)
    model = float64_copy(saved)
    # keras.io's Grad-CAM example: "Remove last layer's softmax", then a model from the input to the layer's output
    # and the scores, and the gradient of the class score through tf.GradientTape.
    softmax, model.layers[-1].activation = model.layers[-1].activation, None
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])

    @tf.function  # one graph: TensorFlow leaves out the weights' gradients, which nothing asks for
    def explain(x: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            activations, logits = grad_model(x, training=False)
            classes = tf.argmax(logits, axis=1) if targets is None else tf.constant(targets)
            # the images are independent (inference mode): the sum's gradient is each image's own class score's
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        gradients, input_gradients = tape.gradient(score, [activations, x])
        return logits, classes, activations, gradients, input_gradients

    logits, classes, activations, gradients, input_gradients = explain(tf.constant(images, tf.float64))
    pooled = tf.reduce_mean(gradients, axis=(1, 2))  # the example's reduce_mean over (0, 1, 2), one image at a time
    gradcam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", activations, pooled))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, probabilities=softmax(logits).numpy(), probabilities_float32=probabilities_float32,
             logits=logits.numpy(), classes=classes.numpy(), activations=activations.numpy(),
             gradients=gradients.numpy(), gradcam=gradcam.numpy(), input_gradients=input_gradients.numpy())
    print(f"{out_path}: {len(images)} images, classes {classes.numpy().tolist()}, {layer} "
          f"{list(activations.shape[1:])}, float64 (a cast copy of {model_path.name})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="keras_models", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, doc in (("xception", xception.__doc__), ("savedmodel", savedmodel.__doc__)):
        commands.add_parser(name, help=doc.split("\n")[0]).add_argument("out_dir", type=Path)
    ref = commands.add_parser("reference", help="Keras' Grad-CAM and gradients of MODEL.keras on INPUTS.npy")
    ref.add_argument("model", type=Path, help="a .keras file (xception.keras, mobilenetv2.keras)")
    ref.add_argument("inputs", type=Path, help="float32 [N, H, W, 3], preprocessed as the model expects")
    ref.add_argument("out", type=Path, help="the .npz to write")
    ref.add_argument("--layer", default="block14_sepconv2_act", help="the Keras layer (default: Xception's last)")
    ref.add_argument("--targets", type=Path, help="int [N]: each image's class (default: its top class)")
    args = parser.parse_args(argv)
    if args.command == "reference":
        reference(args.model, args.inputs, args.out, args.layer, args.targets)
    else:
        {"xception": xception, "savedmodel": savedmodel}[args.command](args.out_dir)


if __name__ == "__main__":
    main()
