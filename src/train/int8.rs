//! The int8 model's file, `OUT/model-int8.safetensors`: written from a
//! trained model and its activation ranges ([`super::quant`]), and read
//! back into a model whose quantised layers compute on integers.
//!
//! `model-int8.safetensors` holds, for each quantised layer `L`:
//! `L.weight` (I8, `[out, in]` or `[out, in, kh, kw]`, PyTorch's layout),
//! `L.weight_scale` (F32 `[out]`), `L.weight_zero_point` (I8 `[out]`,
//! zeros), `L.input_scale` (F32 `[1]`), `L.input_zero_point` (U8 `[1]`) and
//! `L.bias` (F32); every other parameter as F32 under its name in
//! `model.safetensors`; and the model's sizes in `__metadata__["dims"]`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::TensorData;
use burn::tensor::backend::Backend;

use super::model::{Dims, Fusion};
use super::params;
use super::quant::{EPS, LAYERS, Mode, QLayer, Quantizer, W_MAX, act_params};
use crate::error::{Error, IoContext, Result};

/// Per-channel symmetric int8 of a weight given by path, and its scales
/// (the same arithmetic as [`fake_quant_weight`], so the integers are the
/// ones the fake-quantised forward used).
pub(crate) fn quantise_weight(
    data: &TensorData,
    linear_layout: bool,
) -> (Vec<i8>, Vec<usize>, Vec<f32>) {
    let v = data.to_vec::<f32>().expect("f32");
    let shape = data.shape.clone();
    // To [out][in...].
    let (out, rest, t): (usize, usize, Vec<f32>) = match linear_layout {
        true => {
            let (i, o) = (shape[0], shape[1]);
            let mut t = vec![0f32; v.len()];
            for a in 0..i {
                for b in 0..o {
                    t[b * i + a] = v[a * o + b];
                }
            }
            (o, i, t)
        }
        false => (shape[0], v.len() / shape[0], v),
    };
    let mut q = Vec::with_capacity(t.len());
    let mut scales = Vec::with_capacity(out);
    for c in 0..out {
        let row = &t[c * rest..(c + 1) * rest];
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let s = (max / W_MAX).max(EPS);
        scales.push(s);
        q.extend(
            row.iter()
                .map(|x| (x / s).round_ties_even().clamp(-W_MAX, W_MAX) as i8),
        );
    }
    let shape = match linear_layout {
        true => vec![out, rest],
        false => shape.to_vec(),
    };
    (q, shape, scales)
}

/// Writes `model` with `q`'s ranges as an int8 model to `path`; returns
/// its size in bytes.
pub fn write_int8<B: Backend>(
    model: &Fusion<B>,
    d: &Dims,
    q: &Quantizer,
    path: &Path,
) -> Result<u64> {
    let mut t: Vec<(String, &'static str, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let all: BTreeMap<String, TensorData> = params::named(model).into_iter().collect();
    for (name, data) in &all {
        let layer = name.rsplit_once('.').map_or("", |(l, _)| l);
        // Float: what is not a quantised layer's, and the biases.
        if !LAYERS.contains(&layer) || name.ends_with(".bias") {
            t.push((
                name.clone(),
                "F32",
                data.shape.to_vec(),
                f32s(&data.to_vec::<f32>().expect("f32")),
            ));
            continue;
        }
        let (w, shape, scales) = quantise_weight(data, data.shape.len() == 2);
        let Some(&(lo, hi)) = q.ranges.get(layer) else {
            return Err(Error::Execution(format!(
                "cannot quantise {layer}: its inputs were never observed"
            )));
        };
        let (s, z) = act_params(lo, hi);
        let out = shape[0];
        t.push((
            format!("{layer}.weight"),
            "I8",
            shape,
            w.iter().map(|&x| x as u8).collect(),
        ));
        t.push((
            format!("{layer}.weight_scale"),
            "F32",
            vec![out],
            f32s(&scales),
        ));
        t.push((
            format!("{layer}.weight_zero_point"),
            "I8",
            vec![out],
            vec![0; out],
        ));
        t.push((format!("{layer}.input_scale"), "F32", vec![1], f32s(&[s])));
        t.push((
            format!("{layer}.input_zero_point"),
            "U8",
            vec![1],
            vec![z as u8],
        ));
    }
    t.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({
            "dims": serde_json::to_string(d)?,
            "format": "kiln-int8",
            "scheme": "weights int8 per-channel symmetric; inputs uint8 per-tensor affine",
        }),
    );
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in &t {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, _, _, bytes) in &t {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, &out).at("write", path)?;
    Ok(out.len() as u64)
}

/// Reads an int8 model [`write_int8`] wrote: its sizes, its float model
/// (the quantised layers' weights dequantised) and the integer layers.
pub fn read_int8<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(Dims, Fusion<B>, Quantizer)> {
    let bytes = std::fs::read(path).at("read", path)?;
    let bad =
        |why: &str| Error::Execution(format!("{}: not a kiln int8 model: {why}", path.display()));
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(|| bad("short"))?
            .try_into()
            .expect("8"),
    ) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8 + n).ok_or_else(|| bad("short header"))?)?;
    let data = &bytes[8 + n..];
    let dims: Dims = serde_json::from_str(
        header["__metadata__"]["dims"]
            .as_str()
            .ok_or_else(|| bad("no dims"))?,
    )?;
    let raw = |name: &str| -> Result<(&[u8], Vec<usize>)> {
        let t = header.get(name).ok_or_else(|| bad(&format!("no {name}")))?;
        let o = &t["data_offsets"];
        let (a, b) = (
            o[0].as_u64().unwrap_or(0) as usize,
            o[1].as_u64().unwrap_or(0) as usize,
        );
        let shape = t["shape"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        Ok((data.get(a..b).ok_or_else(|| bad(name))?, shape))
    };
    let f32s = |b: &[u8]| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect::<Vec<f32>>()
    };
    let mut q = Quantizer::new(Mode::Int8);
    let mut floats: BTreeMap<String, TensorData> = BTreeMap::new();
    for (name, t) in &header {
        if name == "__metadata__" || t["dtype"] != "F32" || name.ends_with("_scale") {
            continue;
        }
        let (b, shape) = raw(name)?;
        floats.insert(name.clone(), TensorData::new(f32s(b), shape));
    }
    let model = Fusion::<B>::new(&dims, device);
    // The quantised layers' float weights, dequantised (the integer layers
    // compute; these keep the model whole).
    let template: BTreeMap<String, TensorData> = params::named(&model).into_iter().collect();
    for layer in LAYERS {
        if !header.contains_key(&format!("{layer}.weight")) {
            continue;
        }
        let (w, shape) = raw(&format!("{layer}.weight"))?;
        let w: Vec<i8> = w.iter().map(|&x| x as i8).collect();
        let scales = f32s(raw(&format!("{layer}.weight_scale"))?.0);
        let s = f32s(raw(&format!("{layer}.input_scale"))?.0)[0];
        let z = raw(&format!("{layer}.input_zero_point"))?.0[0] as f32;
        let out = shape[0];
        let per = w.len() / out.max(1);
        let deq: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &x)| x as f32 * scales[i / per])
            .collect();
        let key = format!("{layer}.weight");
        let want = template
            .get(&key)
            .ok_or_else(|| bad(&format!("the model has no {key}")))?;
        let value = match shape.len() {
            // [out, in] -> the model's [in, out].
            2 => {
                let i = shape[1];
                let mut t = vec![0f32; deq.len()];
                for o in 0..out {
                    for a in 0..i {
                        t[a * out + o] = deq[o * i + a];
                    }
                }
                TensorData::new(t, [i, out])
            }
            _ => TensorData::new(deq, shape.clone()),
        };
        if value.shape != want.shape {
            return Err(bad(&format!(
                "{key} has shape {:?}, the model {:?}",
                value.shape, want.shape
            )));
        }
        floats.insert(key, value);
        q.int8.insert(
            layer.to_string(),
            QLayer::new(
                w,
                shape,
                scales,
                (s, z),
                floats
                    .get(&format!("{layer}.bias"))
                    .map(|b| b.to_vec::<f32>().expect("f32")),
            ),
        );
    }
    let (model, unused) = params::replaced(model, &floats);
    if !unused.is_empty() {
        return Err(bad(&format!("tensors the model does not have: {unused:?}")));
    }
    Ok((dims, model, q))
}
