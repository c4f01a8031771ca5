"""Full-integer int8 models, quantized the way the official TFLite converter does it.

The float graph is calibrated on random inputs by LiteRT's own calibrator and rewritten by its
post-training quantizer (the code path behind ``TFLiteConverter`` with a representative dataset
and ``TFLITE_BUILTINS_INT8``): per-tensor asymmetric int8 activations, per-channel symmetric
int8 weights for CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, int32 biases, fixed output
ranges for LOGISTIC / SOFTMAX / TANH, shared scales across CONCATENATION / RESHAPE / PAD. Model
inputs and outputs are int8 too, so a kernel's latency is that of the kernel alone.
"""

from __future__ import annotations

import numpy as np

from hwlat.errors import HwlatError
from hwlat.profilers.litert.tflite_writer import METADATA_NAME, add_metadata, read_metadata


def calibration_inputs(model_bytes: bytes, samples: int, seed: int) -> list[list[np.ndarray]]:
    """Standard-normal inputs in the TFLite input layout: the same distribution the numerical
    checks and the ONNX kernel profiles feed."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes, num_threads=1)
    rng = np.random.default_rng(seed)
    details = it.get_input_details()
    return [[rng.standard_normal(tuple(d["shape"])).astype(np.float32) for d in details] for _ in range(samples)]


def quantize_int8(float_model: bytes, *, samples: int = 8, seed: int = 0) -> bytes:
    """The int8 (full-integer, int8 I/O) version of a float .tflite model."""
    from ai_edge_litert import _pywrap_tensorflow_lite_calibration_wrapper as cw

    data = calibration_inputs(float_model, samples, seed)
    i8, i32 = np.dtype(np.int8).num, np.dtype(np.int32).num
    try:
        cal = cw.CalibrationWrapper(float_model, [], [])
        cal.Prepare([list(a.shape) for a in data[0]])
        for sample in data:
            cal.FeedTensor(sample)
        # (input, output, allow_float, activations, bias, disable_per_channel,
        #  disable_per_channel_for_dense): the converter's defaults for full-integer models
        out = cal.QuantizeModel(i8, i8, False, i8, i32, False, False)
    except Exception as e:  # noqa: BLE001 - the pybind layer raises plain RuntimeError/ValueError
        raise HwlatError(f"int8 quantization failed: {str(e).strip().splitlines()[-1][:300]}; "
                         f"compile with precision fp32 instead") from None
    out = _quantize_pad_constants(bytes(out))
    if read_metadata(out) is None:
        out = add_metadata(out, METADATA_NAME, read_metadata(float_model))
    return out


def _quantize_pad_constants(model: bytes) -> bytes:
    """The quantizer leaves PADV2's pad value in float (LiteRT then refuses the model); give it
    the int8 input's parameters. -FLT_MAX (max-pool padding) becomes -128, still the minimum."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    m = fb.ModelT.InitFromPackedBuf(bytearray(model), 0)
    changed = False
    for g in m.subgraphs:
        for op in g.operators:
            if m.operatorCodes[op.opcodeIndex].builtinCode != fb.BuiltinOperator.PADV2:
                continue
            x, c = g.tensors[op.inputs[0]], g.tensors[op.inputs[2]]
            if x.type != fb.TensorType.INT8 or c.type != fb.TensorType.FLOAT32:
                continue
            value = np.frombuffer(bytes(m.buffers[c.buffer].data), dtype=np.float32)
            scale, zp = float(x.quantization.scale[0]), int(x.quantization.zeroPoint[0])
            q = np.clip(np.round(value.astype(np.float64) / scale + zp), -128, 127).astype(np.int8)
            m.buffers[c.buffer].data = np.frombuffer(q.tobytes(), dtype=np.uint8)
            c.type = fb.TensorType.INT8
            c.quantization = fb.QuantizationParametersT()
            c.quantization.scale, c.quantization.zeroPoint = [scale], [zp]
            changed = True
    if not changed:
        return model
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
