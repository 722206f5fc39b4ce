//! The ONNX IR types ldct writes (and reads back: [`f32_initializers`]), generated from
//! `proto/onnx.proto`.
//!
//! Writing a model is `prost::Message::encode_to_vec(&model)`; the file is then a
//! valid `.onnx` file. The constants here are the versions ldct targets: ONNX
//! Runtime 1.31 accepts IR versions up to 13, and PyPI `onnx` 1.23 writes 14 by
//! default, so we write IR version 10 explicitly.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));

/// IR version ldct writes (ONNX 1.16+, accepted by ONNX Runtime >= 1.18).
pub const IR_VERSION: i64 = 10;
/// Default opset of the default ("ai.onnx") domain that ldct writes.
pub const DEFAULT_OPSET: i64 = 17;

/// Shorthand for a default-domain opset import.
pub fn default_opset(version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: String::new(),
        version,
    }
}

/// A float32 tensor type of the given shape; `None` dimensions are symbolic with
/// the given names (`Err(name)`), `Ok(n)` fixed.
pub fn tensor_type(elem_type: tensor_proto::DataType, dims: &[Result<i64, &str>]) -> TypeProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Ok(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Err(name) => tensor_shape_proto::dimension::Value::DimParam((*name).to_owned()),
            }),
            denotation: String::new(),
        })
        .collect();
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: elem_type as i32,
            shape: Some(TensorShapeProto { dim }),
        })),
        denotation: String::new(),
    }
}

/// A named graph input or output.
pub fn value_info(name: &str, ty: TypeProto) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(ty),
        ..Default::default()
    }
}

/// A float32 initializer with raw little-endian data.
pub fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: tensor_proto::DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// An int64 initializer (shapes, pads, axes).
pub fn i64_tensor(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: tensor_proto::DataType::Int64 as i32,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// Attribute constructors.
pub mod attr {
    use super::{attribute_proto::AttributeType, AttributeProto};

    pub fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: AttributeType::Int as i32,
            i,
            ..Default::default()
        }
    }

    pub fn ints(name: &str, ints: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: AttributeType::Ints as i32,
            ints: ints.to_vec(),
            ..Default::default()
        }
    }

    pub fn float(name: &str, f: f32) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: AttributeType::Float as i32,
            f,
            ..Default::default()
        }
    }

    pub fn string(name: &str, s: &str) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: AttributeType::String as i32,
            s: s.as_bytes().to_vec(),
            ..Default::default()
        }
    }
}

/// A node in the default domain.
pub fn node(
    op_type: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op_type.to_owned(),
        name: name.to_owned(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        attribute: attributes,
        ..Default::default()
    }
}

/// The float32 initializers of a model's graph, by name, as `(dims, values)` (from
/// little-endian `raw_data` or from `float_data`); initializers of other element types
/// are left out. An initializer whose data does not match its dims is an error.
pub fn f32_initializers(
    model: &ModelProto,
) -> Result<std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>, String> {
    let mut out = std::collections::HashMap::new();
    let Some(graph) = &model.graph else {
        return Ok(out);
    };
    for t in &graph.initializer {
        if t.data_type != tensor_proto::DataType::Float as i32 {
            continue;
        }
        let dims = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("initializer {}: negative dimension in {:?}", t.name, t.dims))?;
        let count: usize = dims.iter().product();
        let values: Vec<f32> = if t.raw_data.is_empty() {
            t.float_data.clone()
        } else {
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        if values.len() != count {
            return Err(format!(
                "initializer {}: {} values for dims {:?}",
                t.name,
                values.len(),
                dims
            ));
        }
        out.insert(t.name.clone(), (dims, values));
    }
    Ok(out)
}

#[cfg(test)]
mod initializer_tests {
    use super::*;

    #[test]
    fn float_initializers_are_read_from_raw_and_float_data() {
        let raw = f32_tensor("w", &[2, 1], &[1.5, -2.0]);
        let listed = TensorProto {
            name: "b".into(),
            dims: vec![1],
            data_type: tensor_proto::DataType::Float as i32,
            float_data: vec![0.25],
            ..Default::default()
        };
        let model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![raw, listed, i64_tensor("pads", &[2], &[1, 1])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = f32_initializers(&model).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["w"], (vec![2, 1], vec![1.5, -2.0]));
        assert_eq!(got["b"], (vec![1], vec![0.25]));
        let mut bad = model.clone();
        bad.graph.as_mut().unwrap().initializer[0].dims = vec![3];
        assert!(f32_initializers(&bad).unwrap_err().contains("2 values"));
    }
}
