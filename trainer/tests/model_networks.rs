//! Networks built from `ldct_proto::arch`: every preset builds and runs, any
//! size runs through pad/crop, weights round-trip through safetensors, modes
//! (train / eval / frozen) behave, initialisation is deterministic.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use ldct_proto::arch::{
    Arch, Norm, ParamKind, PatchganConfig, Preset, RedcnnConfig, ResnetConfig, UnetConfig,
    Upsampling,
};
use ldct_train::model::{Init, ModelError, Network};
use ndarray::Array2;

fn cpu() -> Device {
    Device::Cpu
}

fn tiny_resnet(norm: Norm) -> Arch {
    Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        norm,
        ..Default::default()
    }))
    .unwrap()
}

fn tiny_unet(depth: usize, norm: Norm) -> Arch {
    Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth,
        norm,
        ..Default::default()
    }))
    .unwrap()
}

fn tiny_patchgan(norm: Norm) -> Arch {
    Arch::from_preset(&Preset::Patchgan(PatchganConfig {
        ndf: 4,
        n_layers: 3,
        norm,
    }))
    .unwrap()
}

fn tiny_redcnn() -> Arch {
    Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
        filters: 4,
        kernel: 5,
    }))
    .unwrap()
}

fn input(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    // A smooth image plus a deterministic pattern, in [-1, 1].
    let v: Vec<f32> = (0..n * h * w)
        .map(|i| {
            let (y, x) = ((i / w) % h, i % w);
            ((x as f32 * 0.3 + y as f32 * 0.17 + seed as f32).sin() * 0.8).clamp(-1.0, 1.0)
        })
        .collect();
    Tensor::from_vec(v, (n, 1, h, w), &cpu()).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn tiny_presets_of_every_kind_build_and_run() {
    let cases = [
        (tiny_resnet(Norm::Instance), 16),
        (tiny_resnet(Norm::Batch), 16),
        (tiny_resnet(Norm::InstanceAffine), 16),
        (tiny_resnet(Norm::None), 16),
        (tiny_unet(2, Norm::Instance), 16),
        (tiny_unet(3, Norm::Batch), 16),
        (tiny_patchgan(Norm::Instance), 32),
        (tiny_patchgan(Norm::Batch), 32),
        (tiny_redcnn(), 24),
    ];
    for (arch, size) in cases {
        let net = Network::new(arch.clone(), &cpu(), DType::F32, Init::default(), 1).unwrap();
        let x = input(2, size, size, 0);
        let expected = arch.output_shape(size, size).unwrap();
        for train in [true, false] {
            let y = net.forward_t(&x, train).unwrap();
            assert_eq!(
                y.dims(),
                &[2, expected.channels, expected.h, expected.w],
                "{}",
                arch.name
            );
            assert!(max_abs(&y).is_finite(), "{}", arch.name);
        }
        let params: usize = net
            .parameters()
            .filter(|(s, _)| s.trainable())
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(params, arch.parameter_count());
    }
}

#[test]
fn generators_add_a_tanh_bounded_correction_to_their_input() {
    // out = input + tanh(head(...)): a zero head gives exactly the identity, and
    // any head keeps |out - in| < 1.
    for arch in [tiny_resnet(Norm::Instance), tiny_unet(2, Norm::Instance)] {
        let net = Network::new(arch.clone(), &cpu(), DType::F32, Init::Kaiming, 3).unwrap();
        let x = input(1, 16, 16, 1);
        let d = max_abs(&(net.forward_t(&x, false).unwrap() - &x).unwrap());
        assert!(d > 0.0 && d < 1.0, "{}: max |out - in| = {d}", arch.name);
        for name in ["head.conv.weight", "head.conv.bias"] {
            let v = net.var(name).unwrap();
            v.set(&v.zeros_like().unwrap()).unwrap();
        }
        let y = net.forward_t(&x, false).unwrap();
        assert_eq!(max_abs(&(y - &x).unwrap()), 0.0, "{}", arch.name);
    }
}

#[test]
fn any_size_runs_through_pad_and_crop() {
    for arch in [
        tiny_resnet(Norm::Instance),
        tiny_unet(3, Norm::Instance),
        tiny_redcnn(),
    ] {
        let net = Network::new(arch.clone(), &cpu(), DType::F32, Init::default(), 2).unwrap();
        let x = input(1, 37, 50, 2);
        let y = net.forward_any_size(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 37, 50], "{}", arch.name);
        // The same through the ndarray helper.
        let img = Array2::from_shape_fn((37, 50), |(i, j)| ((i * 50 + j) as f32 * 0.01).sin());
        let out = net.denoise_normalised(&img).unwrap();
        assert_eq!(out.dim(), (37, 50));
        assert!(out.iter().all(|v| v.is_finite()));
        // A size that is already a multiple goes through unchanged in size.
        let m = arch.spatial_multiple();
        let x = input(1, 8 * m.max(3), 4 * m.max(6), 3);
        let (_, _, h, w) = x.dims4().unwrap();
        let a = net.forward_any_size(&x).unwrap();
        let b = net.forward_t(&x, false).unwrap();
        assert_eq!(a.dims(), &[1, 1, h, w]);
        assert_eq!(max_abs(&(a - b).unwrap()), 0.0);
    }
    // The raw forward refuses sizes the graph cannot take, naming the node.
    let net = Network::new(
        tiny_resnet(Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        2,
    )
    .unwrap();
    let err = net.forward_t(&input(1, 37, 50, 0), false).unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
    // Discriminators have no same-size output.
    let d = Network::new(
        tiny_patchgan(Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        2,
    )
    .unwrap();
    assert!(matches!(
        d.forward_any_size(&input(1, 40, 40, 0)),
        Err(ModelError::Unsupported(_))
    ));
}

#[test]
fn unet_and_redcnn_shape_rules_in_candle() {
    let net = Network::new(
        tiny_unet(3, Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        4,
    )
    .unwrap();
    // Multiples of 8 (non-square too) keep their size.
    for (h, w) in [(8, 16), (24, 8), (32, 40)] {
        let y = net.forward(&input(1, h, w, 0)).unwrap();
        assert_eq!(y.dims(), &[1, 1, h, w]);
    }
    let err = net.forward(&input(1, 12, 16, 0)).unwrap_err();
    assert!(err.to_string().contains("dec"), "{err}");
    let net = Network::new(tiny_redcnn(), &cpu(), DType::F32, Init::default(), 4).unwrap();
    for (h, w) in [(21, 21), (23, 30)] {
        let y = net.forward(&input(1, h, w, 0)).unwrap();
        assert_eq!(y.dims(), &[1, 1, h, w]);
    }
    let err = net.forward(&input(1, 20, 30, 0)).unwrap_err();
    assert!(err.to_string().contains("conv5"), "{err}");
}

#[test]
fn save_load_round_trip_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [tiny_resnet(Norm::Batch), tiny_unet(2, Norm::InstanceAffine)] {
        let mut net = Network::new(arch.clone(), &cpu(), DType::F32, Init::Kaiming, 5).unwrap();
        // Trained-looking weights: non-zero biases, non-trivial norms.
        net.randomise_for_testing(5).unwrap();
        for (spec, var) in net.parameters() {
            let t = var.as_tensor();
            match spec.kind {
                ParamKind::Bias | ParamKind::RunningMean => assert!(max_abs(t) > 0.0),
                ParamKind::RunningVar => {
                    let v = t.to_vec1::<f32>().unwrap();
                    assert!(v.iter().all(|v| (0.5..=1.5).contains(v)));
                }
                ParamKind::Weight => {}
            }
        }
        net.set_training(false);
        let x = input(1, 16, 24, 9);
        let y = net.forward(&x).unwrap();
        net.save_dir(dir.path()).unwrap();
        let back = Network::load_dir(dir.path(), &cpu(), DType::F32).unwrap();
        assert_eq!(back.arch(), &arch);
        let y2 = back.forward_t(&x, false).unwrap();
        assert_eq!(max_abs(&(y - y2).unwrap()), 0.0, "{}", arch.name);
        // Same weights, bit for bit.
        for ((s1, v1), (s2, v2)) in net.parameters().zip(back.parameters()) {
            assert_eq!(s1.name, s2.name);
            assert_eq!(max_abs(&(v1.as_tensor() - v2.as_tensor()).unwrap()), 0.0);
        }
        // An f64 network loads the float32 file too.
        let f64net = Network::load(
            arch,
            dir.path().join("weights.safetensors"),
            &cpu(),
            DType::F64,
        )
        .unwrap();
        let y3 = f64net
            .forward_t(&x.to_dtype(DType::F64).unwrap(), false)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let y = net.forward(&x).unwrap();
        assert!(max_abs(&(y - y3).unwrap()) < 1e-4);
    }
}

#[test]
fn loading_reports_missing_misshapen_and_unexpected_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let net = Network::new(
        tiny_resnet(Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        6,
    )
    .unwrap();
    let mut state: std::collections::HashMap<String, Tensor> =
        net.state().unwrap().into_iter().collect();
    state.remove("blocks.0.conv1.weight");
    state.insert(
        "head.conv.bias".into(),
        Tensor::zeros(2, DType::F32, &cpu()).unwrap(),
    );
    state.insert(
        "extra.weight".into(),
        Tensor::zeros(1, DType::F32, &cpu()).unwrap(),
    );
    candle_core::safetensors::save(&state, &path).unwrap();
    let err = net.load_safetensors(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Weights(_)), "{msg}");
    for needle in [
        "1 missing (blocks.0.conv1.weight)",
        "head.conv.bias: expected [1], found [2]",
        "1 unexpected (extra.weight)",
    ] {
        assert!(msg.contains(needle), "{msg}");
    }
    // Nothing was changed by the failed load; a missing file is an I/O error.
    assert!(matches!(
        net.load_safetensors(dir.path().join("nope.safetensors")),
        Err(ModelError::Io { .. })
    ));
    // A different architecture's weights do not load.
    net.save_safetensors(&path).unwrap();
    let other = Network::new(
        tiny_resnet(Norm::Batch),
        &cpu(),
        DType::F32,
        Init::default(),
        6,
    )
    .unwrap();
    assert!(other.load_safetensors(&path).is_err());
}

#[test]
fn initialisation_is_deterministic_per_seed() {
    let a = Network::new(
        tiny_unet(2, Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        7,
    )
    .unwrap();
    let b = Network::new(
        tiny_unet(2, Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        7,
    )
    .unwrap();
    let c = Network::new(
        tiny_unet(2, Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        8,
    )
    .unwrap();
    let x = input(1, 16, 16, 0);
    let (ya, yb, yc) = (
        a.forward(&x).unwrap(),
        b.forward(&x).unwrap(),
        c.forward(&x).unwrap(),
    );
    assert_eq!(max_abs(&(&ya - yb).unwrap()), 0.0);
    assert!(max_abs(&(ya - yc).unwrap()) > 0.0);
    // Normal(0, 0.02) conv weights; biases zero.
    let w = a.var("enc0.conv1.weight").unwrap().as_tensor().clone();
    let std = w
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!((0.01..0.03).contains(&std), "std {std}");
    let bias = a.var("enc0.conv1.bias").unwrap().as_tensor().clone();
    assert_eq!(max_abs(&bias), 0.0);
}

#[test]
fn batch_norm_modes_and_running_statistics() {
    let mut net = Network::new(
        tiny_resnet(Norm::Batch),
        &cpu(),
        DType::F32,
        Init::default(),
        9,
    )
    .unwrap();
    let rm = net.var("stem.norm.running_mean").unwrap().clone();
    let rv = net.var("stem.norm.running_var").unwrap().clone();
    assert_eq!(max_abs(rm.as_tensor()), 0.0);
    let x = (input(2, 16, 16, 3) + 0.5).unwrap();
    // Inference mode leaves the statistics alone.
    let e1 = net.forward_t(&x, false).unwrap();
    assert_eq!(max_abs(rm.as_tensor()), 0.0);
    // Training mode moves them by momentum 0.1 towards the batch statistics.
    net.forward_t(&x, true).unwrap();
    assert!(max_abs(rm.as_tensor()) > 0.0);
    let rv_values = rv.as_tensor().to_vec1::<f32>().unwrap();
    assert!(rv_values.iter().any(|v| (v - 1.0).abs() > 1e-6));
    // ... and so inference output changes.
    let e2 = net.forward_t(&x, false).unwrap();
    assert!(max_abs(&(e1 - e2).unwrap()) > 0.0);
    // Buffers are saved but not trained.
    let trainable = net.trainable_vars().len();
    let all = net.parameters().count();
    let buffers = net.parameters().filter(|(s, _)| !s.trainable()).count();
    assert_eq!(trainable + buffers, all);
    assert_eq!(buffers, 2 * 7); // 7 batch norms in a 1-block resnet
    net.set_training(false);
    assert!(!net.training());
}

#[test]
fn frozen_networks_pass_gradients_to_their_input_only() {
    let mut d = Network::new(
        tiny_patchgan(Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        10,
    )
    .unwrap();
    let x = candle_core::Var::from_tensor(&input(1, 32, 32, 4)).unwrap();
    d.set_frozen(true);
    let grads = d
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    for v in d.trainable_vars() {
        assert!(grads.get(v.as_tensor()).is_none());
    }
    d.set_frozen(false);
    let grads = d
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in d.trainable_vars() {
        assert!(grads.get(v.as_tensor()).is_some());
    }
}

#[test]
fn training_refuses_sizes_that_hit_candles_parity_bug() {
    let net = Network::new(
        tiny_resnet(Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        11,
    )
    .unwrap();
    // 12x16 is a multiple of 4 (fine); a patchgan on 32x36 is not a multiple of 8
    // and its stride-2 layers see 16x18 then 8x9: different parities.
    let x = input(1, 12, 16, 0);
    let g = net
        .forward_t(&x, true)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward();
    assert!(g.is_ok());
    // The refusal is the Candle backend's (the default `fast` backend has no such bug).
    let d = Network::new(
        tiny_patchgan(Norm::Instance),
        &cpu(),
        DType::F32,
        Init::default(),
        11,
    )
    .unwrap()
    .with_backend(ldct_train::nn::ConvBackend::Candle);
    let err = d.forward_t(&input(1, 32, 36, 0), true).unwrap_err();
    assert!(err.to_string().contains("parities differ"), "{err}");
    // Inference on the same size is fine (the bug is in the backward only), and so
    // is training on square patches of any size.
    assert!(d.forward_t(&input(1, 32, 36, 0), false).is_ok());
    let y = d.forward_t(&input(1, 35, 35, 0), true).unwrap();
    assert!(y.sum_all().unwrap().backward().is_ok());
}

#[test]
fn varmap_shares_the_networks_variables() {
    let arch = tiny_redcnn();
    let map = VarMap::new();
    let a =
        Network::from_varmap(arch.clone(), &map, &cpu(), DType::F32, Init::Kaiming, 12).unwrap();
    assert_eq!(map.all_vars().len(), arch.parameters().len());
    // A second network from the same map uses the same variables.
    let b =
        Network::from_varmap(arch.clone(), &map, &cpu(), DType::F32, Init::default(), 99).unwrap();
    let x = input(1, 24, 24, 5);
    assert_eq!(
        max_abs(&(a.forward(&x).unwrap() - b.forward(&x).unwrap()).unwrap()),
        0.0
    );
    let w = map.data().lock().unwrap()["conv1.weight"].clone();
    w.set(&w.zeros_like().unwrap()).unwrap();
    assert_eq!(max_abs(a.var("conv1.weight").unwrap().as_tensor()), 0.0);
    // The network's own VarMap view holds every parameter under its name.
    assert_eq!(a.varmap().all_vars().len(), arch.parameters().len());
}

/// The ResNet generator's first upsampling stage on its own (the preset's `up1.*`
/// nodes up to the convolution or pixel shuffle, fed from the graph input), with
/// random weights.
fn resnet_up_stage(upsample: Upsampling) -> (Network, usize) {
    let (net, channels) = resnet_up_stage_fresh(upsample);
    net.randomise_for_testing(9).unwrap();
    (net, channels)
}

/// [`resnet_up_stage`] as `Network::new` initialises it.
fn resnet_up_stage_fresh(upsample: Upsampling) -> (Network, usize) {
    let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        norm: Norm::None,
        upsample,
        ..Default::default()
    }))
    .unwrap();
    let mut nodes: Vec<_> = arch
        .nodes
        .iter()
        .filter(|n| n.name.starts_with("up1.") && !n.name.ends_with(".relu"))
        .cloned()
        .collect();
    let first = nodes[0].name.clone();
    nodes[0].inputs = vec![ldct_proto::arch::INPUT.to_string()];
    let last = &nodes.last().unwrap().name;
    assert!(last == "up1.conv" || last == "up1.shuffle", "{nodes:?}");
    let channels = 16; // ngf 4 after two doublings
    let stage = Arch {
        name: format!("up1 from {first}"),
        preset: Preset::Custom,
        input_channels: channels,
        output_channels: channels / 2,
        nodes,
        ..arch
    };
    let net = Network::new(stage, &cpu(), DType::F32, Init::default(), 3).unwrap();
    (net, channels)
}

/// The largest swing, over the interior (4 pixels from each border), of each output
/// channel of `net` on a constant feature map.
fn interior_swing(net: &Network, channels: usize) -> f32 {
    let x = Tensor::full(0.7f32, (1, channels, 8, 8), &cpu()).unwrap();
    let y = net.forward_t(&x, false).unwrap();
    let (_, c, h, w) = y.dims4().unwrap();
    assert_eq!((h, w), (16, 16));
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut swing = 0.0f32;
    for ch in 0..c {
        let inner: Vec<f32> = (4..h - 4)
            .flat_map(|r| (4..w - 4).map(move |q| (r, q)))
            .map(|(r, q)| v[ch * h * w + r * w + q])
            .collect();
        let (lo, hi) = inner
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        swing = swing.max(hi - lo);
    }
    swing
}

#[test]
fn resize_convolution_prints_no_stride_grid() {
    // Odena et al. 2016: a stride-2 transposed convolution with a 3x3 kernel gives
    // output pixels 1, 2 or 4 kernel taps by their parity, so even a constant
    // feature map comes out with a period-2 pattern (the checkerboard the ResNet
    // CycleGAN printed at the skull's edges); nearest 2x + conv 3x3 gives every
    // pixel all nine taps, so a constant map stays constant away from the border.
    let (transposed, ch) = resnet_up_stage(Upsampling::Transposed);
    let (resize, ch2) = resnet_up_stage(Upsampling::Resize);
    assert_eq!(ch, ch2);
    assert!(resize.arch().nodes.iter().any(|n| n.name == "up1.resize"));
    let t = interior_swing(&transposed, ch);
    let r = interior_swing(&resize, ch);
    assert!(t > 0.1, "transposed convolution's swing {t}");
    assert!(r < 1e-5, "resize-convolution's swing {r}");
}

#[test]
fn sub_pixel_convolution_starts_without_a_stride_grid_and_can_leave_it() {
    // Resize-convolution has no grid, but also no way to give the pixels of a 2x2
    // block different kernels; a denoiser's correction is pixel-scale. Conv 3x3 to
    // 4x the channels + pixel shuffle gives each sub-pixel its own kernel, and ICNR
    // (`Network::new`) starts the four alike: a constant map stays constant at the
    // start, and with sub-kernels that differ (as training may make them) it does not.
    let (fresh, ch) = resnet_up_stage_fresh(Upsampling::PixelShuffle);
    assert!(fresh.arch().nodes.iter().any(|n| n.name == "up1.shuffle"));
    let start = interior_swing(&fresh, ch);
    assert!(
        start < 1e-5,
        "sub-pixel convolution's swing at the start {start}"
    );
    // Each group of four kernels is one kernel, repeated.
    let w = fresh.var("up1.conv.weight").unwrap().as_tensor().clone();
    let (o, i, k, _) = w.dims4().unwrap();
    let g = w.reshape((o / 4, 4, i * k * k)).unwrap();
    let spread = (g.max(1).unwrap() - g.min(1).unwrap()).unwrap();
    assert_eq!(max_abs(&spread), 0.0);
    assert!(max_abs(&w) > 0.0);
    let (trained, _) = resnet_up_stage(Upsampling::PixelShuffle);
    let later = interior_swing(&trained, ch);
    assert!(
        later > 0.1,
        "sub-pixel convolution with distinct sub-kernels: swing {later}"
    );
    // The resize-convolution cannot, whatever its weights.
    let (resize, _) = resnet_up_stage(Upsampling::Resize);
    assert!(interior_swing(&resize, ch) < 1e-5);
}

#[test]
fn pixel_shuffle_moves_channel_c4_plus_2i_plus_j_to_pixel_2h_plus_i_2w_plus_j() {
    // PyTorch's pixel_shuffle / ONNX DepthToSpace CRD, checked index by index.
    let (n, c, h, w) = (2usize, 3usize, 2usize, 3usize);
    let x: Vec<f32> = (0..n * c * 4 * h * w).map(|v| v as f32).collect();
    let xt = Tensor::from_vec(x.clone(), (n, c * 4, h, w), &cpu()).unwrap();
    let y = ldct_train::model::pixel_shuffle(&xt, 2).unwrap();
    assert_eq!(y.dims(), &[n, c, 2 * h, 2 * w]);
    let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for b in 0..n {
        for ch in 0..c {
            for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                for r in 0..h {
                    for q in 0..w {
                        let src = x[((b * c * 4 + ch * 4 + i * 2 + j) * h + r) * w + q];
                        let dst = yv[((b * c + ch) * 2 * h + 2 * r + i) * 2 * w + 2 * q + j];
                        assert_eq!(src, dst, "b {b} c {ch} sub-pixel ({i}, {j}) at ({r}, {q})");
                    }
                }
            }
        }
    }
}

#[test]
fn both_resnet_upsamplings_keep_the_input_size() {
    for upsample in [
        Upsampling::Transposed,
        Upsampling::Resize,
        Upsampling::PixelShuffle,
    ] {
        let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig {
            ngf: 4,
            n_blocks: 1,
            upsample,
            ..Default::default()
        }))
        .unwrap();
        let net = Network::new(arch, &cpu(), DType::F32, Init::default(), 1).unwrap();
        let x = input(2, 20, 28, 1);
        let y = net.forward_t(&x, false).unwrap();
        assert_eq!(y.dims(), x.dims(), "{upsample:?}");
    }
}

/// The generator of `configs/<name>` at a test size (`ngf` 4, 2 residual blocks or
/// U-Net base 4; everything else, the norm included, as configured), with random
/// weights.
fn configured_generator_small(name: &str) -> (Network, usize) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    let config = ldct_train::train::TrainConfig::from_file(&path).unwrap();
    let (preset, radius) = match config.model.generator {
        // Receptive-field radius at 2 blocks: stem 3, down 1 + 2, blocks 4 x 4,
        // up 4 + 2, head 3 = 31 by kernel sizes, plus up to 4 because a full-resolution
        // pixel may sit anywhere in its quarter-resolution 4x4 block: 35.
        Preset::Resnet(c) => (
            Preset::Resnet(ResnetConfig {
                ngf: 4,
                n_blocks: 2,
                ..c
            }),
            35,
        ),
        // A bound for depth d: every 3x3 convolution at level l widens the field by
        // 2^l on each side, and a level has at most four of them (down or up, and
        // two more on each side of the U): 1 + 8 * 2^d.
        Preset::Unet(c) => {
            let r = 1 + 8 * (1 << c.depth);
            (Preset::Unet(UnetConfig { base: 4, ..c }), r)
        }
        other => panic!("{name}: generator {other:?}"),
    };
    let net = Network::new(
        Arch::from_preset(&preset).unwrap(),
        &cpu(),
        DType::F32,
        Init::default(),
        5,
    )
    .unwrap();
    net.randomise_for_testing(11).unwrap();
    (net, radius)
}

/// The largest difference, over the pixels at least `radius` from the patch's border,
/// between the generator's output on a patch (what training sees; 16 pixels wider than
/// twice the radius) and its output on the whole slice, 64 pixels wider (what
/// validation, `eval` and the server run).
fn patch_vs_slice(net: &Network, radius: usize) -> f32 {
    let patch = (2 * radius + 16).next_multiple_of(8);
    let size = patch + 64;
    let slice = input(1, size, size, 3);
    // Different content far from the patch, where only a global statistic can see it:
    // air (-1) in the slice's outer band, as around a head.
    let v: Vec<f32> = slice
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, x)| {
            let (y, q) = (i / size, i % size);
            let edge = y.min(q).min(size - 1 - y).min(size - 1 - q);
            if edge < 12 {
                -1.0
            } else {
                x
            }
        })
        .collect();
    let slice = Tensor::from_vec(v, (1, 1, size, size), &cpu()).unwrap();
    let off = (size - patch) / 2;
    let crop = slice
        .narrow(2, off, patch)
        .unwrap()
        .narrow(3, off, patch)
        .unwrap()
        .contiguous()
        .unwrap();
    let whole = net.forward_t(&slice, false).unwrap();
    let part = net.forward_t(&crop, false).unwrap();
    let inner = patch - 2 * radius;
    let a = whole
        .narrow(2, off + radius, inner)
        .unwrap()
        .narrow(3, off + radius, inner)
        .unwrap();
    let b = part
        .narrow(2, radius, inner)
        .unwrap()
        .narrow(3, radius, inner)
        .unwrap();
    max_abs(&(a - b).unwrap())
}

/// Why the generators of `configs/cyclegan.toml`, `configs/cyclegan-resnet.toml` and `configs/iscl.toml` have
/// no normalisation: they are trained on 64x64 patches and run on whole slices, and
/// an instance norm divides every feature map by statistics of the whole input, so
/// the correction a pixel gets depends on what else is in the image (air around the
/// head, the other organs), not on its neighbourhood alone: the network runs on
/// inputs whose statistics it never trained on. Without a norm the output at a pixel
/// depends only on its receptive field, the same in a patch as in the whole slice.
#[test]
fn the_unpaired_generators_correct_a_pixel_the_same_in_a_patch_as_in_the_slice() {
    for name in ["cyclegan.toml", "cyclegan-resnet.toml", "iscl.toml"] {
        let (net, radius) = configured_generator_small(name);
        let diff = patch_vs_slice(&net, radius);
        assert!(diff < 1e-5, "{name}: patch vs slice {diff}");
        // The same network with instance norm (CycleGAN's) does not.
        let preset = match &net.arch().preset {
            Preset::Resnet(c) => Preset::Resnet(ResnetConfig {
                norm: Norm::Instance,
                ..c.clone()
            }),
            Preset::Unet(c) => Preset::Unet(UnetConfig {
                norm: Norm::Instance,
                ..c.clone()
            }),
            other => panic!("{other:?}"),
        };
        let inorm = Network::new(
            Arch::from_preset(&preset).unwrap(),
            &cpu(),
            DType::F32,
            Init::default(),
            5,
        )
        .unwrap();
        inorm.randomise_for_testing(11).unwrap();
        let diff = patch_vs_slice(&inorm, radius);
        assert!(
            diff > 1e-3,
            "{name} with instance norm: patch vs slice {diff}"
        );
    }
}
