//! Open Inference Protocol v2 (KServe / Triton) request and response bodies, with the
//! binary tensor data extension.
//!
//! A request body is JSON, or — with the `Inference-Header-Content-Length: N` header —
//! N bytes of JSON followed by the raw data of every input whose `parameters` carry
//! `binary_data_size`, in input order. Outputs are returned as JSON `data`, or as raw
//! bytes after the JSON (same header in the response) when the output's parameters ask
//! for `binary_data: true` or the request's parameters for `binary_data_output: true`.
//!
//! ldct models take one input `input` and give one output `output`, both `FP32`
//! `[N, 1, H, W]` in the manifest's normalised range. With the request parameter
//! `"ldct_units": "hu"` both are in HU instead (clipped to the model's window on the way
//! in, like `/v1/denoise`). The request parameter `"strength"` (a number in [0, 1])
//! sets the denoising strength, as `?strength=` does for `/v1/denoise`.

use ldct_imaging::limits::SliceLimits;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ServeError;

/// The header naming the JSON part's length in a binary request or response.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The data as its JSON text, flattened into floats only after the shape is checked
    /// (a JSON tree of a large array would cost tens of times its size).
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub parameters: Map<String, Value>,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
}

/// Units of the tensors of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    Normalised,
    Hu,
}

/// A decoded infer request: one FP32 `[N, 1, H, W]` tensor.
#[derive(Debug)]
pub struct DecodedInput {
    pub id: Option<String>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
    pub units: Units,
    pub binary_output: bool,
    /// The request's `strength` parameter, when given.
    pub strength: Option<f32>,
}

fn bad(msg: impl Into<String>) -> ServeError {
    ServeError::InvalidTensor(msg.into())
}

fn flag(params: Option<&Map<String, Value>>, key: &str) -> bool {
    params
        .and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Flattens JSON tensor data (a flat or nested row-major array of numbers) straight
/// from its text into at most `max` floats, with no JSON tree in between.
fn flatten(raw: &RawValue, max: usize) -> Result<Vec<f32>, ServeError> {
    let mut out = Vec::with_capacity(max.min(1 << 20));
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Flat { out: &mut out, max }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| bad(format!("tensor data: {e}")))?;
    Ok(out)
}

/// Numbers and arrays of them, pushed in order onto `out` (at most `max`).
struct Flat<'a> {
    out: &'a mut Vec<f32>,
    max: usize,
}

impl<'de> DeserializeSeed<'de> for Flat<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flat<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers, in a flat or nested array")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if self.out.len() >= self.max {
            return Err(E::custom(format!(
                "more values than the {} the shape declares",
                self.max
            )));
        }
        self.out.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flat { out, max } = self;
        while seq
            .next_element_seed(Flat {
                out: &mut *out,
                max,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// FP32 values from little-endian bytes (a multiple of 4 long; the binary tensor
/// extension and gRPC's raw contents).
pub fn fp32_from_le(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// FP32 values appended to `out` as little-endian bytes.
pub fn fp32_to_le(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Checks an input tensor's name, datatype and shape (`[N, 1, H, W]`) against the
/// model's input and `limits`, before any of its data is read: `(N, H, W, N*H*W)`.
pub fn check_input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    input_name: &str,
    limits: &RequestLimits,
) -> Result<(usize, usize, usize, usize), ServeError> {
    if name != input_name {
        return Err(bad(format!(
            "unknown input {name:?}; the model's input is {input_name:?}"
        )));
    }
    if datatype != "FP32" {
        return Err(bad(format!(
            "input datatype {datatype:?} is not supported; send FP32"
        )));
    }
    let [n, c, h, w] = shape else {
        return Err(bad(format!("input shape {shape:?}: expected [N, 1, H, W]")));
    };
    if *c != 1 || *n < 1 || *h < 1 || *w < 1 {
        return Err(bad(format!(
            "input shape {shape:?}: expected [N, 1, H, W] with N, H, W >= 1"
        )));
    }
    let (n, h, w) = (*n as usize, *h as usize, *w as usize);
    limits.slice.check(h, w)?;
    if n > limits.max_slices {
        return Err(ServeError::TooManySlices {
            slices: n,
            capacity: limits.max_slices,
        });
    }
    let count = n
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .filter(|&v| v <= (1 << 28))
        .ok_or_else(|| bad(format!("input shape {shape:?} is too large")))?;
    Ok((n, h, w, count))
}

/// The request parameters ldct reads: `ldct_units` (`"hu"` or `"normalised"`) and
/// `strength` (0 to 1).
pub fn request_options(
    params: Option<&Map<String, Value>>,
) -> Result<(Units, Option<f32>), ServeError> {
    let units = match params.and_then(|p| p.get("ldct_units")) {
        None => Units::Normalised,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("hu") => Units::Hu,
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("normalised") || s.eq_ignore_ascii_case("normalized") =>
        {
            Units::Normalised
        }
        Some(other) => {
            return Err(bad(format!(
                "parameter ldct_units must be \"hu\" or \"normalised\", not {other}"
            )))
        }
    };
    let strength = match params.and_then(|p| p.get("strength")) {
        None => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| bad(format!("parameter strength must be a number, not {v}")))
                .and_then(crate::inference::pixels::check_strength)?,
        ),
    };
    Ok((units, strength))
}

/// Splits and decodes a request body (`json_len`: the header's value, if any).
/// What a request may hold: the largest slice and the most slices at once (the
/// inference queue's capacity: more could never be admitted).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub slice: SliceLimits,
    pub max_slices: usize,
}

/// Splits and decodes a request body (`json_len`: the header's value, if any). The
/// shape is checked against `limits` before any tensor data is decoded.
pub fn decode_request(
    body: &[u8],
    json_len: Option<usize>,
    input_name: &str,
    output_name: &str,
    limits: &RequestLimits,
) -> Result<DecodedInput, ServeError> {
    if body.is_empty() {
        return Err(ServeError::EmptyBody);
    }
    let (json, mut binary) = match json_len {
        Some(n) if n > body.len() => {
            return Err(bad(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: InferRequest = serde_json::from_slice(json)
        .map_err(|e| ServeError::BadRequest(format!("invalid inference request JSON: {e}")))?;
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!(
            "expected exactly one input ({input_name:?}), got {}",
            req.inputs.len()
        )));
    };
    let (n, h, w, count) = check_input(
        &input.name,
        &input.datatype,
        &input.shape,
        input_name,
        limits,
    )?;

    let data = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        Some(size) => {
            let size = size
                .as_u64()
                .ok_or_else(|| bad("binary_data_size must be a non-negative integer"))?
                as usize;
            if json_len.is_none() {
                return Err(bad(format!(
                    "binary_data_size given without the {HEADER_LENGTH} header"
                )));
            }
            if size != count * 4 {
                return Err(bad(format!(
                    "binary_data_size {size} does not match shape {:?} of FP32 ({} bytes)",
                    input.shape,
                    count * 4
                )));
            }
            if binary.len() < size {
                return Err(bad(format!(
                    "binary data is truncated: {} of {size} bytes",
                    binary.len()
                )));
            }
            let (raw, rest) = binary.split_at(size);
            binary = rest;
            fp32_from_le(raw)
        }
        None => {
            let v = input
                .data
                .as_ref()
                .ok_or_else(|| bad("the input has neither data nor binary_data_size"))?;
            let flat = flatten(v, count)?;
            if flat.len() != count {
                return Err(bad(format!(
                    "{} values for shape {:?} ({count} expected)",
                    flat.len(),
                    input.shape
                )));
            }
            flat
        }
    };
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow that no input claims",
            binary.len()
        )));
    }
    if !data.iter().all(|v| v.is_finite()) {
        return Err(ServeError::NonFinite);
    }

    let params = req.parameters.as_ref();
    let (units, strength) = request_options(params)?;
    let mut binary_output = flag(params, "binary_data_output");
    if let Some(outputs) = &req.outputs {
        for o in outputs {
            if o.name != output_name {
                return Err(bad(format!(
                    "unknown output {:?}; the model's output is {output_name:?}",
                    o.name
                )));
            }
            if o.parameters
                .as_ref()
                .and_then(|p| p.get("binary_data"))
                .is_some()
            {
                binary_output = flag(o.parameters.as_ref(), "binary_data");
            }
        }
    }
    Ok(DecodedInput {
        id: req.id.clone(),
        n,
        h,
        w,
        data,
        units,
        binary_output,
        strength,
    })
}

/// Encodes the response body; returns it with the JSON length when binary.
pub fn encode_response(
    mut response: InferResponse,
    binary: bool,
) -> Result<(Vec<u8>, Option<usize>), ServeError> {
    if !binary {
        let body =
            serde_json::to_vec(&response).map_err(|e| ServeError::Internal(e.to_string()))?;
        return Ok((body, None));
    }
    let mut raw = Vec::new();
    for o in response.outputs.iter_mut() {
        let data = o.data.take().unwrap_or_default();
        o.parameters
            .insert("binary_data_size".into(), Value::from(data.len() * 4));
        fp32_to_le(&data, &mut raw);
    }
    let mut body =
        serde_json::to_vec(&response).map_err(|e| ServeError::Internal(e.to_string()))?;
    let json_len = body.len();
    body.extend_from_slice(&raw);
    Ok((body, Some(json_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        slice: SliceLimits::CT,
        max_slices: 64,
    };

    fn json_request(data: Value, shape: &[i64]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "r1",
            "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}],
            "outputs": [{"name": "output"}]
        }))
        .unwrap()
    }

    #[test]
    fn json_tensors_flat_or_nested() {
        let body = json_request(serde_json::json!([0.5, -0.25, 1.0, 0.0]), &[1, 1, 2, 2]);
        let d = decode_request(&body, None, "input", "output", &LIMITS).unwrap();
        assert_eq!((d.n, d.h, d.w), (1, 2, 2));
        assert_eq!(d.data, vec![0.5, -0.25, 1.0, 0.0]);
        assert_eq!(d.id.as_deref(), Some("r1"));
        assert!(!d.binary_output);
        assert_eq!(d.units, Units::Normalised);
        let body = json_request(
            serde_json::json!([[[[0.5, -0.25], [1.0, 0.0]]]]),
            &[1, 1, 2, 2],
        );
        assert_eq!(
            decode_request(&body, None, "input", "output", &LIMITS)
                .unwrap()
                .data,
            vec![0.5, -0.25, 1.0, 0.0]
        );
    }

    #[test]
    fn binary_tensors_after_the_json_header() {
        let header = serde_json::to_vec(&serde_json::json!({
            "inputs": [{"name": "input", "shape": [2, 1, 1, 2], "datatype": "FP32",
                        "parameters": {"binary_data_size": 16}}],
            "parameters": {"binary_data_output": true, "ldct_units": "hu"}
        }))
        .unwrap();
        let mut body = header.clone();
        for v in [1.0f32, 2.0, -3.0, 4.5] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let d = decode_request(&body, Some(header.len()), "input", "output", &LIMITS).unwrap();
        assert_eq!(d.data, vec![1.0, 2.0, -3.0, 4.5]);
        assert_eq!(d.n, 2);
        assert!(d.binary_output);
        assert_eq!(d.units, Units::Hu);
        // Truncated binary data, or a size that does not match the shape.
        assert!(decode_request(
            &body[..body.len() - 1],
            Some(header.len()),
            "input",
            "output",
            &LIMITS
        )
        .is_err());
        assert!(decode_request(&body, None, "input", "output", &LIMITS).is_err());
    }

    #[test]
    fn bad_requests_are_400_or_422() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"{not json".to_vec(), 400),
            (json_request(serde_json::json!([1, 2, 3]), &[1, 1, 2, 2]), 400),
            (json_request(serde_json::json!([1, 2]), &[1, 2, 1, 1]), 400),
            (json_request(serde_json::json!([1, 2]), &[2, 1]), 400),
            (json_request(serde_json::json!(["a", 2]), &[1, 1, 1, 2]), 400),
            (
                serde_json::to_vec(&serde_json::json!({
                    "inputs": [{"name": "x", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [1]}]
                }))
                .unwrap(),
                400,
            ),
            (
                serde_json::to_vec(&serde_json::json!({
                    "inputs": [{"name": "input", "shape": [1, 1, 1, 1], "datatype": "INT64", "data": [1]}]
                }))
                .unwrap(),
                400,
            ),
            (Vec::new(), 400),
        ];
        for (body, status) in cases {
            let e = decode_request(&body, None, "input", "output", &LIMITS).unwrap_err();
            assert_eq!(e.status().as_u16(), status, "{e}");
        }
        let mut nan = b"{\"inputs\":[{\"name\":\"input\",\"shape\":[1,1,1,1],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":4}}]}".to_vec();
        let n = nan.len();
        nan.extend_from_slice(&f32::NAN.to_le_bytes());
        let e = decode_request(&nan, Some(n), "input", "output", &LIMITS).unwrap_err();
        assert_eq!(e.status().as_u16(), 422);
    }

    #[test]
    fn binary_response_puts_data_after_the_json() {
        let r = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            parameters: Map::new(),
            outputs: vec![OutputTensor {
                name: "output".into(),
                datatype: "FP32".into(),
                shape: vec![1, 1, 1, 2],
                parameters: Map::new(),
                data: Some(vec![1.0, -2.0]),
            }],
        };
        let (body, len) = encode_response(r, true).unwrap();
        let len = len.unwrap();
        let json: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(&body[len..len + 4], &1.0f32.to_le_bytes());
        assert_eq!(&body[len + 4..], &(-2.0f32).to_le_bytes());
    }
}
