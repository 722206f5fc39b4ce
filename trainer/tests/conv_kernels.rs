//! The `fast` convolution backend (`nn::conv_cpu`) against Candle's ops:
//! randomised forward and gradient equality (f32 and f64) over kernel sizes,
//! strides 1-3, paddings, dilations, output paddings, batch sizes, channel counts
//! and non-square inputs; f64 finite-difference checks where Candle's own
//! backward fails (stride-2/3 layers whose H and W have different parities);
//! gradients only for what autograd tracks; whole networks on both backends.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use ldct_proto::arch::{Arch, Norm, PatchganConfig, Preset, ResnetConfig, UnetConfig};
use ldct_train::model::{Init, Network};
use ldct_train::nn::simd::{self, Isa};
use ldct_train::nn::{conv_cpu, gradcheck::check_gradients, ConvBackend, Rectifier};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

const CASES: usize = 120;

fn randn(shape: &[usize], dtype: DType, rng: &mut StdRng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `max |a - b| / max(max |b|, 1e-12)`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    rel_diff_floor(a, b, 1e-12)
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `max |a - b| / max(max |b|, floor)`.
fn rel_diff_floor(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / max_abs(&b).max(floor)
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => 1e-4,
    }
}

/// One randomised layer.
#[derive(Debug, Clone, Copy)]
struct Case {
    transposed: bool,
    n: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    output_padding: usize,
    h: usize,
    w: usize,
    bias: bool,
}

impl Case {
    fn span(&self) -> usize {
        self.dilation * (self.k - 1) + 1
    }

    /// Whether Candle's conv2d backward handles it (equal parities).
    fn candle_backward_ok(&self) -> bool {
        self.transposed || {
            let (s, p, span) = (self.stride, self.padding, self.span());
            (self.h + 2 * p - span) % s == (self.w + 2 * p - span) % s
        }
    }

    fn random(rng: &mut StdRng, transposed: bool) -> Case {
        let k = rng.random_range(1..=4);
        let stride = rng.random_range(1..=3);
        let dilation = if transposed {
            1
        } else {
            rng.random_range(1..=2)
        };
        let padding = rng.random_range(0..=2);
        let span = dilation * (k - 1) + 1;
        let output_padding = if transposed {
            rng.random_range(0..stride)
        } else {
            0
        };
        let mut size = || loop {
            let s: usize = rng.random_range(1..=13);
            let ok = if transposed {
                (s - 1) * stride + span + output_padding > 2 * padding
            } else {
                s + 2 * padding >= span
            };
            if ok {
                break s;
            }
        };
        let (h, w) = (size(), size());
        Case {
            transposed,
            n: rng.random_range(1..=3),
            // Up to 4 output channels take the direct kernels, more im2col + GEMM.
            c_in: rng.random_range(1..=10),
            c_out: rng.random_range(1..=10),
            k,
            stride,
            padding,
            dilation,
            output_padding,
            h,
            w,
            bias: rng.random_bool(0.6),
        }
    }

    fn weight_shape(&self) -> [usize; 4] {
        if self.transposed {
            [self.c_in, self.c_out, self.k, self.k]
        } else {
            [self.c_out, self.c_in, self.k, self.k]
        }
    }

    fn run(
        &self,
        backend: ConvBackend,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.transposed {
            backend.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding)
        } else {
            backend.conv2d(x, w, b, self.stride, self.padding, self.dilation)
        }
    }
}

struct Setup {
    x: Var,
    w: Var,
    b: Var,
    r: Tensor,
}

fn setup(c: &Case, dtype: DType, rng: &mut StdRng) -> Setup {
    let x = Var::from_tensor(&randn(&[c.n, c.c_in, c.h, c.w], dtype, rng)).unwrap();
    let w = Var::from_tensor(&randn(&c.weight_shape(), dtype, rng)).unwrap();
    let b = Var::from_tensor(&randn(&[c.c_out], dtype, rng)).unwrap();
    // The projection that makes the loss `sum(y * r)`, sized by the reference.
    let y = c
        .run(ConvBackend::Candle, &x, &w, Some(&b))
        .unwrap()
        .detach();
    let r = randn(y.dims(), dtype, rng);
    Setup { x, w, b, r }
}

fn loss(c: &Case, s: &Setup, backend: ConvBackend) -> Result<Tensor> {
    let b = c.bias.then_some(s.b.as_tensor());
    (c.run(backend, &s.x, &s.w, b)? * &s.r)?.sum_all()
}

fn grads(c: &Case, s: &Setup, backend: ConvBackend) -> Result<GradStore> {
    loss(c, s, backend)?.backward()
}

#[test]
fn forward_matches_candle() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in [DType::F32, DType::F64] {
        for i in 0..2 * CASES {
            let c = Case::random(&mut rng, i % 2 == 1);
            let s = setup(&c, dtype, &mut rng);
            let b = c.bias.then_some(s.b.as_tensor());
            let fast = c.run(ConvBackend::Fast, &s.x, &s.w, b)?;
            let reference = c.run(ConvBackend::Candle, &s.x, &s.w, b)?;
            let d = rel_diff(&fast, &reference);
            assert!(d <= tol(dtype), "{c:?} {dtype:?}: forward differs by {d:e}");
        }
    }
    Ok(())
}

#[test]
fn gradients_match_candle_where_its_backward_works() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(12);
    let mut compared = [0usize; 2];
    for dtype in [DType::F32, DType::F64] {
        for i in 0..2 * CASES {
            let c = Case::random(&mut rng, i % 2 == 1);
            if !c.candle_backward_ok() {
                continue;
            }
            let s = setup(&c, dtype, &mut rng);
            let fast = grads(&c, &s, ConvBackend::Fast)?;
            let reference = grads(&c, &s, ConvBackend::Candle)?;
            let mut vars = vec![("x", &s.x), ("w", &s.w)];
            if c.bias {
                vars.push(("b", &s.b));
            }
            for (name, v) in vars {
                let f = fast.get(v).expect("fast gradient");
                let r = reference.get(v).expect("reference gradient");
                let d = rel_diff(f, r);
                assert!(d <= tol(dtype), "{c:?} {dtype:?}: d{name} differs by {d:e}");
            }
            compared[c.transposed as usize] += 1;
        }
    }
    eprintln!(
        "compared {} conv2d and {} conv_transpose2d cases",
        compared[0], compared[1]
    );
    assert!(compared[0] > CASES / 2 && compared[1] > CASES / 2);
    Ok(())
}

/// Layers large enough that the kernels split every sample into several bands
/// (and the weight gradient into several shares), batches of small samples that
/// share one GEMM, 1x1 convolutions (which skip im2col) and layers with few
/// output channels (direct kernels); in thread pools of 1, 2 and 3 threads, as
/// the task split depends on the thread count.
#[test]
fn banded_layers_match_candle() -> Result<()> {
    for threads in [1, 2, 3] {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .install(banded_layers)?;
    }
    Ok(())
}

fn banded_layers() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(17);
    let layer = |transposed, n, c_in, c_out, k, stride, padding, h, w| Case {
        transposed,
        n,
        c_in,
        c_out,
        k,
        stride,
        padding,
        dilation: 1,
        output_padding: usize::from(transposed && stride > 1),
        h,
        w,
        bias: true,
    };
    let cases = [
        layer(false, 2, 24, 16, 3, 1, 1, 40, 56),
        layer(false, 1, 16, 24, 3, 2, 1, 48, 34),
        layer(false, 3, 8, 12, 7, 1, 0, 30, 70),
        layer(false, 2, 40, 8, 1, 1, 0, 36, 44),
        layer(false, 1, 4, 8, 4, 2, 1, 90, 64),
        layer(true, 2, 24, 16, 3, 2, 1, 20, 28),
        layer(true, 1, 16, 8, 3, 1, 1, 30, 44),
        layer(true, 2, 32, 6, 1, 1, 0, 30, 40),
        // Few output channels (of the convolution: the transposed one's input).
        layer(false, 2, 16, 1, 7, 1, 0, 40, 46),
        layer(false, 3, 24, 3, 4, 2, 1, 30, 18),
        layer(true, 2, 3, 8, 3, 2, 1, 20, 24),
        // Many small samples (several per GEMM).
        layer(false, 9, 8, 12, 3, 2, 1, 10, 12),
        layer(false, 12, 6, 10, 1, 1, 0, 5, 7),
        layer(true, 9, 12, 8, 3, 2, 1, 5, 6),
    ];
    for dtype in [DType::F32, DType::F64] {
        for c in cases {
            let s = setup(&c, dtype, &mut rng);
            let y = c.run(ConvBackend::Fast, &s.x, &s.w, Some(s.b.as_tensor()))?;
            let r = c.run(ConvBackend::Candle, &s.x, &s.w, Some(s.b.as_tensor()))?;
            let d = rel_diff(&y, &r);
            assert!(d <= tol(dtype), "{c:?} {dtype:?}: forward differs by {d:e}");
            let fast = grads(&c, &s, ConvBackend::Fast)?;
            let reference = grads(&c, &s, ConvBackend::Candle)?;
            for (name, v) in [("x", &s.x), ("w", &s.w), ("b", &s.b)] {
                let d = rel_diff(fast.get(v).unwrap(), reference.get(v).unwrap());
                assert!(d <= tol(dtype), "{c:?} {dtype:?}: d{name} differs by {d:e}");
            }
        }
    }
    Ok(())
}

/// 3x3 stride-1 layers with enough channels for the Winograd kernels (forward
/// and input gradient; from 192 channels the weight gradient too), odd and even
/// sizes, paddings 0-3 (3: the input gradient falls back to col2im).
#[test]
fn winograd_layers_match_candle() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(18);
    for dtype in [DType::F32, DType::F64] {
        for i in 0..30 {
            let wide = i >= 24;
            let transposed = i % 3 == 2;
            let padding = rng.random_range(0..=3);
            let mut size = || loop {
                let s: usize = rng.random_range(1..=23);
                if transposed && s + 2 > 2 * padding || !transposed && s + 2 * padding >= 3 {
                    break s;
                }
            };
            let (h, w) = (size(), size());
            let c = Case {
                transposed,
                n: rng.random_range(1..=3),
                c_in: rng.random_range(if wide { 192..=200 } else { 16..=40 }),
                c_out: rng.random_range(if wide { 192..=200 } else { 16..=40 }),
                k: 3,
                stride: 1,
                padding,
                dilation: 1,
                output_padding: 0,
                h,
                w,
                bias: rng.random_bool(0.5),
            };
            let s = setup(&c, dtype, &mut rng);
            let b = c.bias.then_some(s.b.as_tensor());
            let y = c.run(ConvBackend::Fast, &s.x, &s.w, b)?;
            let r = c.run(ConvBackend::Candle, &s.x, &s.w, b)?;
            let d = rel_diff(&y, &r);
            assert!(d <= tol(dtype), "{c:?} {dtype:?}: forward differs by {d:e}");
            let fast = grads(&c, &s, ConvBackend::Fast)?;
            let reference = grads(&c, &s, ConvBackend::Candle)?;
            for (name, v) in [("x", &s.x), ("w", &s.w), ("b", &s.b)] {
                if name == "b" && !c.bias {
                    continue;
                }
                let d = rel_diff(fast.get(v).unwrap(), reference.get(v).unwrap());
                assert!(d <= tol(dtype), "{c:?} {dtype:?}: d{name} differs by {d:e}");
            }
        }
    }
    Ok(())
}

/// Every vector level this CPU has (`nn::simd`: baseline SSE2, AVX2, AVX-512) gives
/// the same convolutions: Winograd layers wide enough for the kernels' full
/// blocks (16 tiles and more per row) and ragged edges, every gradient against
/// Candle's, with the level forced for the process (the other levels are just as
/// correct, so tests running meanwhile are unaffected).
#[test]
fn every_vector_level_matches_candle() -> Result<()> {
    let levels: Vec<Isa> = [Isa::Baseline, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&l| l <= Isa::supported())
        .collect();
    let mut rng = StdRng::seed_from_u64(24);
    for &level in &levels {
        simd::force(Some(level));
        assert_eq!(Isa::detect(), level);
        for i in 0..6 {
            let c = Case {
                transposed: i % 3 == 2,
                n: rng.random_range(1..=2),
                c_in: rng.random_range(16..=24),
                c_out: rng.random_range(16..=24),
                k: 3,
                stride: 1,
                padding: 1,
                dilation: 1,
                output_padding: 0,
                h: rng.random_range(8..=40),
                w: rng.random_range(33..=48),
                bias: true,
            };
            let s = setup(&c, DType::F32, &mut rng);
            let y = c.run(ConvBackend::Fast, &s.x, &s.w, Some(s.b.as_tensor()))?;
            let r = c.run(ConvBackend::Candle, &s.x, &s.w, Some(s.b.as_tensor()))?;
            let d = rel_diff(&y, &r);
            assert!(
                d <= tol(DType::F32),
                "{level:?} {c:?}: forward differs by {d:e}"
            );
            let fast = grads(&c, &s, ConvBackend::Fast)?;
            let reference = grads(&c, &s, ConvBackend::Candle)?;
            for (name, v) in [("x", &s.x), ("w", &s.w), ("b", &s.b)] {
                let d = rel_diff(fast.get(v).unwrap(), reference.get(v).unwrap());
                assert!(
                    d <= tol(DType::F32),
                    "{level:?} {c:?}: d{name} differs by {d:e}"
                );
            }
        }
    }
    simd::force(None);
    Ok(())
}

/// Strided layers whose H and W have different parities (Candle's backward fails
/// on them): the fast gradients against central differences in f64.
#[test]
fn gradients_match_finite_differences_where_candle_fails() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(13);
    let mut checked = 0;
    let mut candle_failed = 0;
    while checked < 30 {
        let mut c = Case::random(&mut rng, false);
        c.stride = rng.random_range(2..=3);
        c.bias = true;
        if c.candle_backward_ok()
            || c.h + 2 * c.padding < c.span()
            || c.w + 2 * c.padding < c.span()
        {
            continue;
        }
        let s = setup(&c, DType::F64, &mut rng);
        if grads(&c, &s, ConvBackend::Candle).is_err() {
            candle_failed += 1;
        }
        let check = check_gradients(
            &[("x", &s.x), ("w", &s.w), ("b", &s.b)],
            || loss(&c, &s, ConvBackend::Fast),
            1e-6,
            40,
        )?;
        assert!(check.passes(1e-7, 1e-6), "{c:?}: {check}");
        checked += 1;
    }
    eprintln!("{checked} unequal-parity cases, Candle's backward failed on {candle_failed}");
    assert!(
        candle_failed > 0,
        "the cases should include ones Candle cannot do"
    );
    Ok(())
}

/// Transposed convolutions with output padding, against central differences
/// too (Candle's transposed-conv backward is itself under test above).
#[test]
fn transposed_gradients_match_finite_differences() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(14);
    for _ in 0..20 {
        let mut c = Case::random(&mut rng, true);
        c.bias = true;
        let s = setup(&c, DType::F64, &mut rng);
        let check = check_gradients(
            &[("x", &s.x), ("w", &s.w), ("b", &s.b)],
            || loss(&c, &s, ConvBackend::Fast),
            1e-6,
            40,
        )?;
        assert!(check.passes(1e-7, 1e-6), "{c:?}: {check}");
    }
    Ok(())
}

/// Gradients only for tracked arguments: a plain input (the first layer) or
/// detached parameters (a frozen network) get none, and the rest stay right.
#[test]
fn only_tracked_arguments_get_gradients() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(15);
    for transposed in [false, true] {
        let c = Case {
            transposed,
            n: 2,
            c_in: 3,
            c_out: 4,
            k: 3,
            stride: 2,
            padding: 1,
            dilation: 1,
            output_padding: usize::from(transposed),
            h: 8,
            w: 6,
            bias: true,
        };
        let s = setup(&c, DType::F32, &mut rng);
        let reference = grads(&c, &s, ConvBackend::Candle)?;
        // Plain input, tracked weights.
        let x = s.x.as_tensor().detach();
        let y = c.run(ConvBackend::Fast, &x, &s.w, Some(s.b.as_tensor()))?;
        let g = (y * &s.r)?.sum_all()?.backward()?;
        assert!(g.get(&x).is_none());
        assert!(rel_diff(g.get(&s.w).unwrap(), reference.get(&s.w).unwrap()) <= 1e-4);
        assert!(rel_diff(g.get(&s.b).unwrap(), reference.get(&s.b).unwrap()) <= 1e-4);
        // Tracked input, detached weights and bias.
        let (w, b) = (s.w.as_tensor().detach(), s.b.as_tensor().detach());
        let y = c.run(ConvBackend::Fast, &s.x, &w, Some(&b))?;
        let g = (y * &s.r)?.sum_all()?.backward()?;
        assert!(g.get(&w).is_none() && g.get(&b).is_none());
        assert!(g.get(s.w.as_tensor()).is_none());
        assert!(rel_diff(g.get(&s.x).unwrap(), reference.get(&s.x).unwrap()) <= 1e-4);
        // Nothing tracked: a plain tensor without a graph.
        let y = c.run(ConvBackend::Fast, &x, &w, Some(&b))?;
        assert!(!y.track_op());
    }
    Ok(())
}

#[test]
fn fast_falls_back_to_candle_for_other_dtypes() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(16);
    let x = randn(&[1, 2, 7, 6], DType::F32, &mut rng);
    let w = randn(&[3, 2, 3, 3], DType::F32, &mut rng);
    let (xh, wh) = (x.to_dtype(DType::F16)?, w.to_dtype(DType::F16)?);
    assert!(!conv_cpu::supports(&xh) && conv_cpu::supports(&x));
    let fast = ConvBackend::Fast.conv2d(&xh, &wh, None, 1, 1, 1)?;
    let reference = ConvBackend::Candle.conv2d(&xh, &wh, None, 1, 1, 1)?;
    assert_eq!(rel_diff(&fast, &reference), 0.0);
    Ok(())
}

#[test]
fn backend_names() {
    for b in ConvBackend::ALL {
        assert_eq!(b.to_string().parse::<ConvBackend>(), Ok(*b));
    }
    assert_eq!("FAST".parse::<ConvBackend>(), Ok(ConvBackend::Fast));
    assert_eq!(ConvBackend::default(), ConvBackend::Fast);
    assert!(ConvBackend::ALL.contains(&ConvBackend::Candle));
    assert!(ConvBackend::Fast.any_size_backward(&Device::Cpu, DType::F32));
    assert!(!ConvBackend::Fast.any_size_backward(&Device::Cpu, DType::BF16));
    assert!(!ConvBackend::Candle.any_size_backward(&Device::Cpu, DType::F32));
}

/// Forward output and every parameter's and the input's gradient of a network
/// on both backends.
fn compare_networks(arch: Arch, dtype: DType, n: usize, h: usize, w: usize, frozen: bool) {
    let mut net = Network::new(arch, &Device::Cpu, dtype, Init::default(), 3).unwrap();
    net.randomise_for_testing(4).unwrap();
    net.set_frozen(frozen);
    let mut rng = StdRng::seed_from_u64(5);
    let x = Var::from_tensor(&randn(
        &[n, net.arch().input_channels, h, w],
        dtype,
        &mut rng,
    ))
    .unwrap();
    let mut outputs = Vec::new();
    for backend in [ConvBackend::Candle, ConvBackend::Fast] {
        let y = net.clone().with_backend(backend).forward(&x).unwrap();
        let r = randn(y.dims(), dtype, &mut StdRng::seed_from_u64(6));
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        outputs.push((y, g));
    }
    let ((y0, g0), (y1, g1)) = (&outputs[0], &outputs[1]);
    let t = tol(dtype) * 10.0;
    let d = rel_diff(y1, y0);
    assert!(d <= t, "{}: outputs differ by {d:e}", net.arch().name);
    let dx = rel_diff(g1.get(&x).unwrap(), g0.get(&x).unwrap());
    assert!(
        dx <= t,
        "{}: input gradients differ by {dx:e}",
        net.arch().name
    );
    // Relative to the largest gradient of the network where a parameter's own
    // gradient vanishes (the bias of a convolution before an instance norm has
    // an exact gradient of zero, so only rounding noise is there to compare).
    let largest = net
        .parameters()
        .filter_map(|(_, v)| g0.get(v))
        .map(max_abs)
        .fold(0.0, f64::max);
    for (spec, var) in net.parameters() {
        match (g0.get(var), g1.get(var)) {
            (Some(a), Some(b)) => {
                let d = rel_diff_floor(b, a, 1e-3 * largest);
                assert!(
                    d <= t,
                    "{}: d{} differs by {d:e}",
                    net.arch().name,
                    spec.name
                );
            }
            (None, None) => {}
            (a, b) => panic!(
                "{}: {} has a gradient on one backend only ({} / {})",
                net.arch().name,
                spec.name,
                a.is_some(),
                b.is_some()
            ),
        }
    }
    if frozen {
        assert!(net.parameters().all(|(_, v)| g1.get(v).is_none()));
    }
}

#[test]
fn resnet_generator_matches_candle() {
    let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf: 8,
        n_blocks: 2,
        ..Default::default()
    }))
    .unwrap();
    compare_networks(arch.clone(), DType::F32, 2, 24, 20, false);
    compare_networks(arch.clone(), DType::F64, 1, 16, 16, false);
    compare_networks(arch, DType::F32, 2, 16, 16, true);
}

#[test]
fn unet_and_patchgan_match_candle() {
    let unet = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        norm: Norm::Batch,
        ..Default::default()
    }))
    .unwrap();
    compare_networks(unet, DType::F32, 2, 16, 12, false);
    let patchgan = Arch::from_preset(&Preset::Patchgan(PatchganConfig {
        ndf: 8,
        n_layers: 3,
        norm: Norm::Instance,
    }))
    .unwrap();
    compare_networks(patchgan.clone(), DType::F32, 2, 32, 32, false);
    compare_networks(patchgan, DType::F32, 2, 32, 32, true);
}

/// The fast backend trains on sizes whose stride-2 layers see unequal parities
/// (which the Candle backend refuses), with correct input-shaped gradients.
#[test]
fn fast_backend_trains_on_any_size() -> Result<()> {
    let arch = Arch::from_preset(&Preset::Patchgan(PatchganConfig {
        ndf: 4,
        n_layers: 3,
        norm: Norm::Instance,
    }))
    .unwrap();
    let net = Network::new(arch, &Device::Cpu, DType::F64, Init::default(), 1)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    net.randomise_for_testing(2)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    // 32 x 34: layer1 (stride 2) sees 16 x 17.
    let x = Var::from_tensor(&randn(
        &[1, 1, 32, 34],
        DType::F64,
        &mut StdRng::seed_from_u64(7),
    ))?;
    assert!(net
        .clone()
        .with_backend(ConvBackend::Candle)
        .forward(&x)
        .is_err());
    let fast = net.with_backend(ConvBackend::Fast);
    let y = fast.forward(&x)?;
    let g = y.sqr()?.sum_all()?.backward()?;
    assert_eq!(g.get(&x).unwrap().dims(), &[1, 1, 32, 34]);
    let w = fast
        .var("layer1.conv.weight")
        .expect("patchgan layer1")
        .clone();
    let check = check_gradients(
        &[("x", &x), ("layer1.conv.weight", &w)],
        || fast.forward(&x)?.sqr()?.sum_all(),
        1e-6,
        30,
    )?;
    assert!(check.passes(1e-7, 1e-5), "{check}");
    Ok(())
}

/// A convolution and its ReLU or leaky ReLU as one op (`conv2d_rectified`,
/// `conv_transpose2d_rectified`) against Candle's convolution, bias and `relu` /
/// `leaky_relu` as separate ops: equal outputs and gradients for x, w and b, f32
/// and f64, Winograd, im2col, strided and transposed layers.
#[test]
fn fused_rectifier_matches_candles_convolution_then_relu() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(31);
    for r in [Rectifier::RELU, Rectifier::leaky(0.2)] {
        for dtype in [DType::F32, DType::F64] {
            // (transposed, c_in, c_out, size, stride, padding, output_padding)
            for (transposed, c_in, c_out, size, stride, padding, op) in [
                (false, 16, 24, 26, 1, 1, 0),
                (false, 3, 8, 9, 2, 1, 0),
                (false, 5, 6, 7, 1, 0, 0),
                (true, 8, 6, 5, 2, 1, 1),
            ] {
                // Non-square where Candle's backward allows it (not stride 2 with H
                // and W of different parities).
                let w_len = if stride == 1 { size + 1 } else { size };
                let x = Var::from_tensor(&randn(&[2, c_in, size, w_len], dtype, &mut rng))?;
                let wshape = if transposed {
                    [c_in, c_out, 3, 3]
                } else {
                    [c_out, c_in, 3, 3]
                };
                let w = Var::from_tensor(&(randn(&wshape, dtype, &mut rng) * 0.2)?)?;
                let b = Var::from_tensor(&randn(&[c_out], dtype, &mut rng))?;
                let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
                let fused = if transposed {
                    conv_cpu::conv_transpose2d_rectified(
                        xt,
                        wt,
                        Some(bt),
                        stride,
                        padding,
                        op,
                        1,
                        r,
                    )?
                } else {
                    conv_cpu::conv2d_rectified(xt, wt, Some(bt), stride, padding, 1, r)?
                };
                let plain = if transposed {
                    xt.conv_transpose2d(wt, padding, op, stride, 1)?
                } else {
                    xt.conv2d(wt, padding, stride, 1, 1)?
                };
                let reference = r.candle(&plain.broadcast_add(&bt.reshape((1, c_out, 1, 1))?)?)?;
                let what = format!("{r:?} {transposed} {c_in}->{c_out} {dtype:?}");
                let d = rel_diff(&fused, &reference);
                assert!(d <= tol(dtype), "{what}: forward {d:e}");
                let g = randn(fused.dims(), dtype, &mut rng);
                let g1 = (fused * &g)?.sum_all()?.backward()?;
                let g2 = (reference * &g)?.sum_all()?.backward()?;
                for (name, v) in [("x", xt), ("w", wt), ("b", bt)] {
                    let d = rel_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                    assert!(d <= tol(dtype), "{what}: d{name} {d:e}");
                }
            }
        }
    }
    Ok(())
}
