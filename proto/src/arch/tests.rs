use super::*;

/// Parameters of a conv with bias.
fn conv(cin: usize, cout: usize, k: usize, bias: bool) -> usize {
    cin * cout * k * k + if bias { cout } else { 0 }
}

/// The CycleGAN ResNet generator's parameter count (instance norm without
/// affine parameters: every conv has a bias, norms have none).
fn resnet_count(cin: usize, cout: usize, ngf: usize, blocks: usize) -> usize {
    conv(cin, ngf, 7, true)
        + conv(ngf, 2 * ngf, 3, true)
        + conv(2 * ngf, 4 * ngf, 3, true)
        + blocks * 2 * conv(4 * ngf, 4 * ngf, 3, true)
        + conv(4 * ngf, 2 * ngf, 3, true)
        + conv(2 * ngf, ngf, 3, true)
        + conv(ngf, cout, 7, true)
}

fn resnet(ngf: usize, n_blocks: usize, norm: Norm) -> Preset {
    Preset::Resnet(ResnetConfig {
        ngf,
        n_blocks,
        norm,
        ..Default::default()
    })
}

#[test]
fn cyclegan_resnet_9blocks_has_the_known_parameter_count() {
    // The well-known 11.378M of CycleGAN's resnet_9blocks, ngf 64, RGB.
    let arch = resnet(64, 9, Norm::Instance).build(3, 3).unwrap();
    assert_eq!(arch.parameter_count(), 11_378_179);
    assert_eq!(resnet_count(3, 3, 64, 9), 11_378_179);
    // ldct's single-channel version.
    let arch = Arch::from_preset(&resnet(64, 9, Norm::Instance)).unwrap();
    assert_eq!(arch.parameter_count(), resnet_count(1, 1, 64, 9));
    assert_eq!(arch.parameter_count(), 11_365_633);
}

#[test]
fn resnet_norm_variants_change_biases_and_norm_parameters() {
    let ngf = 8;
    let base = resnet_count(1, 1, ngf, 2);
    // Conv layers followed by a norm: stem, 2 downs, 2 per block, 2 ups.
    let normed_convs_out = ngf + 2 * ngf + 4 * ngf + 2 * 2 * 4 * ngf + 2 * ngf + ngf;
    let none = Arch::from_preset(&resnet(ngf, 2, Norm::None)).unwrap();
    assert_eq!(none.parameter_count(), base);
    let affine = Arch::from_preset(&resnet(ngf, 2, Norm::InstanceAffine)).unwrap();
    assert_eq!(affine.parameter_count(), base + 2 * normed_convs_out);
    let batch = Arch::from_preset(&resnet(ngf, 2, Norm::Batch)).unwrap();
    // No conv bias before a batch norm; weight and bias per norm channel.
    assert_eq!(
        batch.parameter_count(),
        base - normed_convs_out + 2 * normed_convs_out
    );
    // Running statistics are parameters of the file but not trainable.
    let buffers: usize = batch
        .parameters()
        .iter()
        .filter(|p| !p.trainable())
        .map(ParamSpec::numel)
        .sum();
    assert_eq!(buffers, 2 * normed_convs_out);
}

#[test]
fn patchgan_70_has_the_known_parameter_count_and_map_size() {
    let p = Preset::Patchgan(PatchganConfig::default());
    let arch = p.build(3, 1).unwrap();
    // CycleGAN's basic (n_layers 3) discriminator on RGB: 2,764,737.
    assert_eq!(arch.parameter_count(), 2_764_737);
    let arch = Arch::from_preset(&p).unwrap();
    assert_eq!(
        arch.parameter_count(),
        conv(1, 64, 4, true)
            + conv(64, 128, 4, true)
            + conv(128, 256, 4, true)
            + conv(256, 512, 4, true)
            + conv(512, 1, 4, true)
    );
    assert_eq!(arch.parameter_count(), 2_762_689);
    let out = arch.output_shape(256, 256).unwrap();
    assert_eq!((out.channels, out.h, out.w), (1, 30, 30));
    let out = arch.output_shape(128, 128).unwrap();
    assert_eq!((out.h, out.w), (14, 14));
    assert_eq!(arch.spatial_multiple(), 8);
    assert!(!arch.preserves_size());
}

#[test]
fn redcnn_has_the_papers_size_and_shape_rules() {
    let arch = Arch::from_preset(&Preset::Redcnn(RedcnnConfig::default())).unwrap();
    let f = 96;
    let expected = conv(1, f, 5, true)
        + 4 * conv(f, f, 5, true)
        + 4 * conv(f, f, 5, true)
        + conv(f, 1, 5, true);
    assert_eq!(arch.parameter_count(), expected);
    assert_eq!(expected, 1_848_865);
    assert_eq!(arch.spatial_multiple(), 1);
    assert!(arch.preserves_size());
    // Any size above 20 works and is preserved.
    for (h, w) in [(21, 21), (37, 50), (64, 23)] {
        let s = arch.output_shape(h, w).unwrap();
        assert_eq!((s.channels, s.h, s.w), (1, h, w));
    }
    let err = arch.output_shape(20, 64).unwrap_err();
    assert!(
        matches!(&err, ArchError::Shape { node, .. } if node == "conv5"),
        "{err}"
    );
    assert_eq!(arch.min_size(), Some(21));
    assert_eq!(arch.padded_size(37, 50).unwrap(), (37, 50));
    assert_eq!(arch.padded_size(5, 50).unwrap(), (21, 50));
}

#[test]
fn unet_shape_rules() {
    for depth in 1..=4 {
        let cfg = UnetConfig {
            base: 4,
            depth,
            ..Default::default()
        };
        let arch = Arch::from_preset(&Preset::Unet(cfg)).unwrap();
        let m = 1 << depth;
        assert_eq!(arch.spatial_multiple(), m);
        assert_eq!(arch.min_size(), Some(m));
        for (h, w) in [(m, 3 * m), (4 * m, 2 * m)] {
            let s = arch.output_shape(h, w).unwrap();
            assert_eq!((s.channels, s.h, s.w), (1, h, w));
        }
        // Not a multiple: the skip concat of the first mismatched level fails.
        let err = arch.output_shape(m + 1, m).unwrap_err();
        assert!(
            matches!(&err, ArchError::Shape { node, reason, .. } if node.ends_with(".cat") && reason.contains("joins")),
            "{err}"
        );
        assert_eq!(arch.padded_size(m + 1, 1).unwrap(), (2 * m, m));
    }
}

#[test]
fn unet_parameter_count_by_formula() {
    let (b, depth) = (8, 3);
    let arch = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: b,
        depth,
        ..Default::default()
    }))
    .unwrap();
    let ch = |l: usize| b << l;
    let mut n = conv(1, b, 3, true) + conv(b, b, 3, true);
    for l in 1..=depth {
        n += conv(ch(l - 1), ch(l), 3, true) + conv(ch(l), ch(l), 3, true);
        n += conv(ch(l), ch(l - 1), 3, true) // transposed: same count
            + conv(2 * ch(l - 1), ch(l - 1), 3, true)
            + conv(ch(l - 1), ch(l - 1), 3, true);
    }
    n += conv(b, 1, 1, true);
    assert_eq!(arch.parameter_count(), n);
    // The default (base 32, depth 4), same formula.
    let default = Arch::from_preset(&Preset::Unet(UnetConfig::default())).unwrap();
    assert_eq!(default.parameter_count(), 8_629_921);
}

#[test]
fn resnet_shapes_multiple_and_errors() {
    let arch = Arch::from_preset(&resnet(4, 1, Norm::Instance)).unwrap();
    assert_eq!(arch.spatial_multiple(), 4);
    assert_eq!(arch.min_size(), Some(8));
    assert!(arch.preserves_size());
    let shapes = arch.infer_shapes(64, 48).unwrap();
    let by_name = |n: &str| shapes[arch.nodes.iter().position(|x| x.name == n).unwrap()];
    assert_eq!(by_name("stem.pad").to_string(), "1x70x54");
    assert_eq!(by_name("down2.relu").to_string(), "16x16x12");
    assert_eq!(by_name("up2.relu").to_string(), "4x64x48");
    assert_eq!(by_name("residual").to_string(), "1x64x48");
    // Not a multiple of 4: the global residual cannot add 37x50 to 40x52.
    let err = arch.output_shape(37, 50).unwrap_err();
    assert!(
        matches!(&err, ArchError::Shape { node, .. } if node == "residual"),
        "{err}"
    );
    assert!(err.to_string().contains("37x50"), "{err}");
    // Too small for the reflection padding of the residual blocks.
    let err = arch.output_shape(4, 4).unwrap_err();
    assert!(
        matches!(&err, ArchError::Shape { node, .. } if node == "blocks.0.pad1"),
        "{err}"
    );
    assert_eq!(arch.padded_size(37, 50).unwrap(), (40, 52));
    assert_eq!(arch.padded_size(3, 1).unwrap(), (8, 8));
    // MACs: 7x7 stem on 64x48 alone is 64*48*4*49.
    assert!(arch.macs(64, 48).unwrap() > (64 * 48 * 4 * 49) as u64);
}

#[test]
fn parameter_names_are_deterministic_and_unique() {
    let arch = Arch::from_preset(&resnet(64, 9, Norm::Instance)).unwrap();
    let params = arch.parameters();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names[0], "stem.conv.weight");
    assert_eq!(names[1], "stem.conv.bias");
    assert!(names.contains(&"blocks.3.conv1.weight"));
    assert!(names.contains(&"up2.conv.weight"));
    assert_eq!(*names.last().unwrap(), "head.conv.bias");
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    let up = params.iter().find(|p| p.name == "up1.conv.weight").unwrap();
    assert_eq!(
        up.shape,
        vec![256, 128, 3, 3],
        "transposed conv weight is [in, out, k, k]"
    );
}

#[test]
fn json_round_trip_of_every_preset() {
    let presets = [
        resnet(4, 1, Norm::Instance),
        resnet(4, 2, Norm::Batch),
        Preset::Unet(UnetConfig {
            base: 4,
            depth: 2,
            norm: Norm::InstanceAffine,
            tanh: false,
            global_residual: false,
            noise_map: false,
        }),
        Preset::Unet(UnetConfig {
            base: 4,
            depth: 2,
            norm: Norm::None,
            tanh: true,
            global_residual: true,
            noise_map: true,
        }),
        Preset::Patchgan(PatchganConfig {
            ndf: 4,
            n_layers: 2,
            norm: Norm::None,
        }),
        Preset::Redcnn(RedcnnConfig {
            filters: 4,
            kernel: 3,
        }),
    ];
    for p in presets {
        let arch = Arch::from_preset(&p).unwrap();
        let json = arch.to_json();
        let back = Arch::from_json(&json).unwrap();
        assert_eq!(back, arch);
        assert_eq!(back.to_json(), json);
    }
}

#[test]
fn preset_deserialises_with_defaults_and_rejects_typos() {
    let p: Preset =
        serde_json::from_str(r#"{"kind": "resnet", "ngf": 32, "n_blocks": 6}"#).unwrap();
    assert_eq!(
        p,
        Preset::Resnet(ResnetConfig {
            ngf: 32,
            n_blocks: 6,
            ..Default::default()
        })
    );
    let p: Preset = serde_json::from_str(r#"{"kind": "unet"}"#).unwrap();
    assert_eq!(p, Preset::Unet(UnetConfig::default()));
    assert!(serde_json::from_str::<Preset>(r#"{"kind": "resnet", "ngff": 32}"#).is_err());
    assert!(serde_json::from_str::<Preset>(r#"{"kind": "vgg"}"#).is_err());
}

#[test]
fn validation_catches_malformed_graphs() {
    let mut arch = Arch::from_preset(&resnet(4, 1, Norm::Instance)).unwrap();
    let good = arch.clone();

    arch.nodes[3].inputs = vec!["blocks.0.add".into()];
    let err = arch.validate().unwrap_err();
    assert!(err.to_string().contains("earlier node"), "{err}");

    let mut arch = good.clone();
    arch.nodes[1].name = "stem.pad".into();
    assert!(arch
        .validate()
        .unwrap_err()
        .to_string()
        .contains("duplicate"));

    let mut arch = good.clone();
    if let Op::Conv2d { in_channels, .. } = &mut arch.nodes[1].op {
        *in_channels = 3;
    }
    let err = arch.validate().unwrap_err();
    assert!(
        matches!(&err, ArchError::Invalid { node, reason } if node == "stem.conv" && reason.contains("input channels")),
        "{err}"
    );

    let mut arch = good.clone();
    arch.output_channels = 2;
    assert!(arch.validate().is_err());

    let mut arch = good.clone();
    arch.nodes.last_mut().unwrap().inputs.pop();
    assert!(arch.validate().unwrap_err().to_string().contains("2 input"));

    let mut json: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
    json["nodes"][1]["inputs"][0] = "nowhere".into();
    assert!(Arch::from_json(&json.to_string()).is_err());

    assert!(Preset::Resnet(ResnetConfig::default()).build(1, 2).is_err());
    assert!(Preset::Custom.build(1, 1).is_err());
}

#[test]
fn custom_graph_with_upsample_and_zero_pad() {
    let arch = Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: "tiny".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 2,
        nodes: vec![
            Node {
                name: "down".into(),
                op: Op::Conv2d {
                    in_channels: 1,
                    out_channels: 2,
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                    dilation: 1,
                    bias: false,
                },
                inputs: vec![INPUT.into()],
            },
            Node {
                name: "up".into(),
                op: Op::Upsample {
                    scale: 2,
                    mode: UpsampleMode::Nearest,
                },
                inputs: vec!["down".into()],
            },
            Node {
                name: "pad".into(),
                op: Op::ZeroPad2d { pad: 1 },
                inputs: vec!["up".into()],
            },
        ],
    };
    arch.validate().unwrap();
    assert_eq!(arch.spatial_multiple(), 2);
    assert_eq!(arch.output_shape(6, 4).unwrap().to_string(), "2x8x6");
    assert_eq!(arch.parameter_count(), 8);
    assert!(arch.summary().contains("custom graph"));
}

/// The arch.json of a tiny ResNet generator, whole (the schema of a run folder's and
/// an export's network description): a reviewed snapshot.
#[test]
fn json_schema_of_a_tiny_resnet() {
    let arch = Arch::from_preset(&resnet(4, 1, Norm::Instance)).unwrap();
    insta::assert_snapshot!(arch.to_json());
}

/// Every preset at its defaults, at a glance: name, one-line summary, parameter
/// counts, the pixel contract's sizes and the cost of a 256x256 slice. The counts of
/// the defaults are also checked against the formulas above.
#[test]
fn default_presets_at_a_glance() {
    let presets = [
        Preset::Resnet(ResnetConfig::default()),
        Preset::Unet(UnetConfig::default()),
        Preset::Patchgan(PatchganConfig::default()),
        Preset::Redcnn(RedcnnConfig::default()),
    ];
    let table: Vec<serde_json::Value> = presets
        .iter()
        .map(|p| {
            let arch = Arch::from_preset(p).unwrap();
            let trainable: usize = arch
                .parameters()
                .iter()
                .filter(|s| s.trainable())
                .map(ParamSpec::numel)
                .sum();
            serde_json::json!({
                "name": arch.name,
                "summary": arch.summary(),
                "nodes": arch.nodes.len(),
                "parameters": arch.parameter_count(),
                "trainable": trainable,
                "spatial_multiple": arch.spatial_multiple(),
                "min_size": arch.min_size(),
                "preserves_size": arch.preserves_size(),
                "macs_256x256": arch.macs(256, 256).ok(),
            })
        })
        .collect();
    insta::assert_json_snapshot!(table);
}

fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    }
}

fn small_unet() -> Arch {
    Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        norm: Norm::Instance,
        tanh: false,
        global_residual: false,
        noise_map: false,
    }))
    .unwrap()
}

/// Two prefixed networks combined with every element-wise op: `a * exp(b) / (0.5 *
/// a + 2) + a`.
fn composed() -> Arch {
    let net = small_unet();
    let mut nodes = net.prefixed_nodes("a");
    nodes.extend(net.prefixed_nodes("b"));
    let a = format!("a.{}", net.output_node());
    let b = format!("b.{}", net.output_node());
    nodes.push(node("exp", Op::Exp, &[&b]));
    nodes.push(node("prod", Op::Mul, &[&a, "exp"]));
    nodes.push(node(
        "den",
        Op::Affine {
            scale: 0.5,
            shift: 2.0,
        },
        &[&a],
    ));
    nodes.push(node("quot", Op::Div, &["prod", "den"]));
    nodes.push(node("out", Op::Add, &["quot", INPUT]));
    Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: "composed".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes,
    }
}

#[test]
fn prefixed_nodes_rename_nodes_inputs_and_parameters() {
    let net = small_unet();
    let nodes = net.prefixed_nodes("score");
    assert_eq!(nodes.len(), net.nodes.len());
    for (p, n) in nodes.iter().zip(&net.nodes) {
        assert_eq!(p.name, format!("score.{}", n.name));
        assert_eq!(p.op, n.op);
        for (pi, ni) in p.inputs.iter().zip(&n.inputs) {
            if ni == INPUT {
                assert_eq!(pi, INPUT);
            } else {
                assert_eq!(pi, &format!("score.{ni}"));
            }
        }
    }
    assert_eq!(nodes[0].inputs, vec![INPUT.to_string()]);
    let arch = Arch {
        nodes,
        preset: Preset::Custom,
        ..net.clone()
    };
    arch.validate().unwrap();
    let names: Vec<String> = arch.parameters().into_iter().map(|p| p.name).collect();
    let expected: Vec<String> = net
        .parameters()
        .into_iter()
        .map(|p| format!("score.{}", p.name))
        .collect();
    assert_eq!(names, expected);
    assert_eq!(arch.parameter_count(), net.parameter_count());
    assert_eq!(arch.macs(16, 16).unwrap(), net.macs(16, 16).unwrap());
    assert_eq!(arch.spatial_multiple(), net.spatial_multiple());
}

#[test]
fn composed_graph_with_elementwise_ops() {
    let net = small_unet();
    let arch = composed();
    arch.validate().unwrap();
    assert_eq!(arch.parameter_count(), 2 * net.parameter_count());
    // Element-wise ops count no MACs: two networks' worth.
    assert_eq!(arch.macs(16, 12).unwrap(), 2 * net.macs(16, 12).unwrap());
    assert_eq!(arch.output_shape(16, 12).unwrap().to_string(), "1x16x12");
    assert_eq!(arch.spatial_multiple(), 4);
    assert!(arch.preserves_size());
    assert!(arch.summary().contains("custom graph"));
    let json = arch.to_json();
    let back = Arch::from_json(&json).unwrap();
    assert_eq!(back, arch);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ops: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["op"]["type"].as_str().unwrap())
        .collect();
    for k in ["exp", "mul", "affine", "div"] {
        assert!(ops.contains(&k), "{k} missing from {ops:?}");
    }
    let den = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "den")
        .unwrap();
    assert_eq!(den["op"]["scale"], 0.5);
    assert_eq!(den["op"]["shift"], 2.0);
}

#[test]
fn elementwise_ops_validate_arity_channels_and_sizes() {
    let conv = |name: &str, cout: usize, stride: usize| {
        node(
            name,
            Op::Conv2d {
                in_channels: 1,
                out_channels: cout,
                kernel: 3,
                stride,
                padding: 1,
                dilation: 1,
                bias: true,
            },
            &[INPUT],
        )
    };
    let arch = |nodes: Vec<Node>| Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: "t".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes,
    };
    for op in [Op::Mul, Op::Div] {
        // Two inputs needed.
        let a = arch(vec![conv("c", 1, 1), node("m", op.clone(), &["c"])]);
        assert!(a.validate().unwrap_err().to_string().contains("2 input"));
        // Channels must agree.
        let a = arch(vec![
            conv("c", 2, 1),
            node("m", op.clone(), &["c", INPUT]),
            node(
                "h",
                Op::Affine {
                    scale: 1.0,
                    shift: 0.0,
                },
                &["m"],
            ),
        ]);
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("equal shapes"), "{e}");
        // Spatial sizes must agree.
        let a = arch(vec![conv("c", 1, 2), node("m", op.clone(), &["c", INPUT])]);
        a.validate().unwrap();
        assert!(a.infer_shapes(8, 8).is_err());
        // Same shapes: fine.
        let a = arch(vec![conv("c", 1, 1), node("m", op, &["c", INPUT])]);
        assert_eq!(a.output_shape(8, 6).unwrap().to_string(), "1x8x6");
    }
    for op in [
        Op::Exp,
        Op::Affine {
            scale: 2.0,
            shift: -1.0,
        },
    ] {
        let a = arch(vec![node("e", op.clone(), &[INPUT])]);
        assert_eq!(a.output_shape(5, 7).unwrap().to_string(), "1x5x7");
        assert_eq!(a.macs(5, 7).unwrap(), 0);
        let a = arch(vec![conv("c", 1, 1), node("e", op, &["c", INPUT])]);
        assert!(a.validate().is_err());
    }
    let a = arch(vec![node(
        "e",
        Op::Affine {
            scale: f64::NAN,
            shift: 0.0,
        },
        &[INPUT],
    )]);
    assert!(a.validate().unwrap_err().to_string().contains("finite"));
}

#[test]
fn without_image_tail_turns_off_tanh_and_the_global_residual_only() {
    let r = resnet(8, 2, Norm::Instance);
    let Some(Preset::Resnet(c)) = r.without_image_tail() else {
        panic!("resnet has an image tail to drop");
    };
    assert!(!c.tanh && !c.global_residual);
    assert_eq!((c.ngf, c.n_blocks, c.norm), (8, 2, Norm::Instance));
    let Some(Preset::Unet(c)) = Preset::Unet(UnetConfig::default()).without_image_tail() else {
        panic!("unet has an image tail to drop");
    };
    assert!(!c.tanh && !c.global_residual);
    assert_eq!(c.base, UnetConfig::default().base);
    assert_eq!(
        Preset::Patchgan(PatchganConfig::default()).without_image_tail(),
        None
    );
}

#[test]
fn a_noise_map_unet_takes_two_channels_and_adds_back_the_image_only() {
    let arch = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        norm: Norm::None,
        tanh: true,
        global_residual: true,
        noise_map: true,
    }))
    .unwrap();
    assert_eq!(arch.input_channels, 2);
    assert_eq!(arch.output_channels, 1);
    assert!(arch.name.ends_with("_noisemap"), "{}", arch.name);
    let image = arch.node("image").unwrap();
    assert_eq!(image.op, Op::SelectChannels { start: 0, count: 1 });
    assert_eq!(image.inputs, vec![INPUT.to_string()]);
    let residual = arch.nodes.last().unwrap();
    assert_eq!(residual.inputs[0], "image");
    // The first convolution sees both channels.
    match &arch.node("enc0.conv1").unwrap().op {
        Op::Conv2d { in_channels, .. } => assert_eq!(*in_channels, 2),
        other => panic!("{other:?}"),
    }
    let shapes = arch.infer_shapes(16, 16).unwrap();
    assert_eq!(shapes.last().unwrap().channels, 1);
    // Selecting past the input's channels is refused.
    let mut bad = arch.clone();
    let i = bad.nodes.len() - 2;
    bad.nodes[i].op = Op::SelectChannels { start: 1, count: 2 };
    assert!(bad.validate().is_err());
}

#[test]
fn resnet_long_skip_adds_the_stem_to_the_last_up_stage_and_no_parameters() {
    let plain = resnet(4, 2, Norm::Instance);
    let skip = Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 2,
        long_skip: true,
        ..Default::default()
    });
    let (a, b) = (
        Arch::from_preset(&plain).unwrap(),
        Arch::from_preset(&skip).unwrap(),
    );
    assert_eq!(a.parameter_count(), b.parameter_count());
    assert_eq!(b.nodes.len(), a.nodes.len() + 1);
    let node = |arch: &Arch, name: &str| arch.nodes.iter().find(|n| n.name == name).cloned();
    assert!(node(&a, "long_skip").is_none());
    let add = node(&b, "long_skip").unwrap();
    assert!(matches!(add.op, Op::Add));
    assert_eq!(add.inputs, vec!["up2.relu".to_string(), "stem.relu".into()]);
    assert_eq!(
        node(&b, "head.pad").unwrap().inputs,
        vec!["long_skip".to_string()]
    );
    assert_eq!(
        node(&a, "head.pad").unwrap().inputs,
        vec!["up2.relu".to_string()]
    );
    // Left out of the JSON when false, so older architectures stay byte for byte.
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("long_skip"), "{json}");
    let json = serde_json::to_string(&skip).unwrap();
    assert!(json.contains("\"long_skip\":true"), "{json}");
    assert_eq!(serde_json::from_str::<Preset>(&json).unwrap(), skip);
    assert!(skip.describe().contains("long skip"), "{}", skip.describe());
}
