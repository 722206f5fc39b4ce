//! Reflection padding, instance / batch norm: values and f64 finite-difference
//! gradient checks; and Candle 0.11's conv2d stride/parity backward bug.

use candle_core::{DType, Device, Result, Tensor, Var};
use ldct_train::nn::{self, gradcheck::check_gradients, Rectifier};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

const EPS: f64 = 1e-6;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `sum(y * r)` for a fixed random `r` (so that normalisations get a non-trivial
/// gradient).
fn project(y: &Tensor, seed: u64) -> Result<Tensor> {
    let r = randn(y.dims(), seed);
    (y * r)?.sum_all()
}

#[test]
fn reflection_pad_values_match_onnx_reflect() -> Result<()> {
    let x = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((1, 1, 3, 4))?;
    let y = nn::reflection_pad2d(&x, [1, 2, 2, 1])?;
    assert_eq!(y.dims(), &[1, 1, 6, 7]);
    let rows: Vec<Vec<f32>> = y.squeeze(0)?.squeeze(0)?.to_vec2()?;
    // Row order: 1 | 0 1 2 | 1 0 (mirror without repeating the edge).
    assert_eq!(rows[0], vec![6., 5., 4., 5., 6., 7., 6.]);
    assert_eq!(rows[1], vec![2., 1., 0., 1., 2., 3., 2.]);
    assert_eq!(rows[3], vec![10., 9., 8., 9., 10., 11., 10.]);
    assert_eq!(rows[4], vec![6., 5., 4., 5., 6., 7., 6.]);
    assert_eq!(rows[5], vec![2., 1., 0., 1., 2., 3., 2.]);
    // Pads must be smaller than the axis.
    assert!(nn::reflection_pad2d(&x, [3, 0, 0, 0]).is_err());
    Ok(())
}

#[test]
fn reflection_pad_gradient_check() -> Result<()> {
    let x = Var::from_tensor(&randn(&[2, 3, 4, 5], 1))?;
    let check = check_gradients(
        &[("x", &x)],
        || project(&nn::reflection_pad2d(&x, [2, 1, 3, 1])?, 2),
        EPS,
        usize::MAX,
    )?;
    eprintln!("reflection pad: {check}");
    assert_eq!(check.checked(), 120);
    assert!(check.passes(1e-7, 1e-5), "{check}");
    Ok(())
}

#[test]
fn pad_to_size_and_crop() -> Result<()> {
    let x = randn(&[1, 2, 5, 3], 3);
    let (p, (h, w)) = nn::pad_to_multiple(&x, 4)?;
    assert_eq!(p.dims(), &[1, 2, 8, 4]);
    assert_eq!((h, w), (5, 3));
    let back = nn::crop(&p, h, w)?;
    let diff = (back - &x)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert_eq!(diff, 0.0);
    // Pads longer than the image bounce back and forth: [a b] -> a b a b a b.
    let x = Tensor::new(&[[[[1f32, 2.]]]], &Device::Cpu)?;
    let p = nn::pad_to_size(&x, 3, 6)?;
    assert_eq!(
        p.flatten_all()?.to_vec1::<f32>()?,
        [1., 2., 1., 2., 1., 2.].repeat(3)
    );
    assert!(nn::pad_to_size(&x, 1, 1).is_err());
    Ok(())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn instance_norm_fused_matches_reference_and_normalises() -> Result<()> {
    let x = ((randn(&[2, 3, 7, 5], 4) * 3.0)? + 1.5)?;
    for dtype in [DType::F64, DType::F32] {
        let x = x.to_dtype(dtype)?;
        let fused = nn::instance_norm(&x, 1e-5, None)?;
        let reference = nn::instance_norm_reference(&x, 1e-5)?;
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        assert!(max_diff(&fused, &reference) < tol, "{dtype:?}");
        // Per-plane mean 0 and (biased) variance ~1.
        let f = fused.to_dtype(DType::F64)?.reshape((6, 35))?;
        let mean = f.mean_keepdim(1)?;
        let var = f.broadcast_sub(&mean)?.sqr()?.mean(1)?;
        assert!(mean.abs()?.max_all()?.to_scalar::<f64>()? < 1e-5);
        assert!((var - 1.0)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-4);
    }
    // Non-contiguous input (a transposed view) gives the transposed result.
    let xt = x.transpose(2, 3)?;
    let a = nn::instance_norm(&xt, 1e-5, None)?;
    let b = nn::instance_norm(&x, 1e-5, None)?.transpose(2, 3)?;
    assert!(max_diff(&a, &b) < 1e-12);
    Ok(())
}

#[test]
fn instance_norm_gradient_check_fused_reference_and_affine() -> Result<()> {
    let x = Var::from_tensor(&((randn(&[2, 3, 4, 5], 5) * 2.0)? + 0.3)?)?;
    let weight = Var::from_tensor(&(randn(&[3], 6) + 1.0)?)?;
    let bias = Var::from_tensor(&randn(&[3], 7))?;
    let fused = check_gradients(
        &[("x", &x), ("weight", &weight), ("bias", &bias)],
        || project(&nn::instance_norm(&x, 1e-5, Some((&weight, &bias)))?, 8),
        EPS,
        usize::MAX,
    )?;
    eprintln!("instance norm (fused, affine): {fused}");
    assert!(fused.passes(1e-7, 1e-5), "{fused}");
    let reference = check_gradients(
        &[("x", &x)],
        || project(&nn::instance_norm_reference(&x, 1e-5)?, 8),
        EPS,
        usize::MAX,
    )?;
    eprintln!("instance norm (reference): {reference}");
    assert!(reference.passes(1e-7, 1e-5), "{reference}");

    // f32: the fused backward agrees with autograd through the reference ops.
    let x32 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F32)?)?;
    let r = randn(&[2, 3, 4, 5], 9).to_dtype(DType::F32)?;
    let g1 = (nn::instance_norm(&x32, 1e-5, None)? * &r)?
        .sum_all()?
        .backward()?;
    let g2 = (nn::instance_norm_reference(&x32, 1e-5)? * &r)?
        .sum_all()?
        .backward()?;
    let d = max_diff(g1.get(&x32).unwrap(), g2.get(&x32).unwrap());
    assert!(d < 1e-5, "fused vs reference f32 gradient differ by {d}");
    Ok(())
}

/// Instance norm + ReLU / leaky ReLU as one op against the reference norm then
/// Candle's `relu` / `leaky_relu`: values and input gradients (f64, f32), and an
/// f64 finite-difference check of the fused op.
#[test]
fn instance_norm_rectified_matches_the_two_ops_and_gradient_check() -> Result<()> {
    for r in [Rectifier::RELU, Rectifier::leaky(0.2)] {
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(&((randn(&[3, 4, 6, 5], 13) * 2.0)? + 0.4)?.to_dtype(dtype)?)?;
            let g = randn(&[3, 4, 6, 5], 14).to_dtype(dtype)?;
            let fused = nn::instance_norm_rectified(&x, 1e-5, r)?;
            let reference = r.candle(&nn::instance_norm_reference(&x, 1e-5)?)?;
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(max_diff(&fused, &reference) < tol, "{r:?} {dtype:?}");
            let g1 = (fused * &g)?.sum_all()?.backward()?;
            let g2 = (reference * &g)?.sum_all()?.backward()?;
            let d = max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert!(d < tol * 10.0, "{r:?} {dtype:?}: gradients differ by {d}");
        }
        let x = Var::from_tensor(&((randn(&[2, 3, 4, 5], 15) * 2.0)? + 0.3)?)?;
        let check = check_gradients(
            &[("x", &x)],
            || project(&nn::instance_norm_rectified(&x, 1e-5, r)?, 16),
            EPS,
            usize::MAX,
        )?;
        eprintln!("instance norm + {r:?}: {check}");
        assert!(check.passes(1e-7, 1e-5), "{r:?}: {check}");
    }
    Ok(())
}

#[test]
fn batch_norm_gradient_check_with_batch_statistics() -> Result<()> {
    let x = Var::from_tensor(&randn(&[3, 2, 3, 4], 10))?;
    let weight = Var::from_tensor(&(randn(&[2], 11) + 1.0)?)?;
    let bias = Var::from_tensor(&randn(&[2], 12))?;
    let check = check_gradients(
        &[("x", &x), ("weight", &weight), ("bias", &bias)],
        || {
            let (m, v) = nn::batch_stats(&x)?;
            project(&nn::batch_norm(&x, &m, &v, &weight, &bias, 1e-5)?, 13)
        },
        EPS,
        usize::MAX,
    )?;
    eprintln!("batch norm: {check}");
    assert!(check.passes(1e-7, 1e-5), "{check}");
    Ok(())
}

#[test]
fn strided_conv_gradient_check_on_matching_parities() -> Result<()> {
    // Candle's conv2d backward is right when H and W have the same parity.
    let w = Var::from_tensor(&randn(&[2, 2, 3, 3], 14))?;
    for (h, wd) in [(8, 8), (7, 9), (6, 10)] {
        let x = Var::from_tensor(&randn(&[1, 2, h, wd], 15))?;
        let check = check_gradients(
            &[("x", &x), ("w", &w)],
            || project(&x.conv2d(&w, 1, 2, 1, 1)?, 16),
            EPS,
            usize::MAX,
        )?;
        assert!(check.passes(1e-7, 1e-5), "{h}x{wd}: {check}");
    }
    Ok(())
}

/// Candle 0.11 bug: the conv2d backward takes the transposed convolution's
/// `output_padding` from H and uses it for W too (backprop.rs, `Op::Conv2D`), so
/// a stride-2 convolution over an input whose H and W differ in parity has no
/// gradient: backward fails with a shape mismatch. Ignored because it fails;
/// run with `--ignored` to see it, it passes once Candle is fixed.
#[test]
#[ignore = "fails on Candle 0.11: conv2d backward with stride 2 and H, W of different parity"]
fn candle_conv2d_backward_with_mixed_parity() {
    let x = Var::from_tensor(&randn(&[1, 1, 8, 9], 17)).unwrap();
    let w = Var::from_tensor(&randn(&[1, 1, 3, 3], 18)).unwrap();
    // Forward is fine: 8x9 -> 4x5.
    let y = x.conv2d(&w, 1, 2, 1, 1).unwrap();
    assert_eq!(y.dims(), &[1, 1, 4, 5]);
    match y.sum_all().unwrap().backward() {
        Ok(g) => assert_eq!(g.get(&x).unwrap().dims(), &[1, 1, 8, 9]),
        Err(e) => panic!("Candle's conv2d backward failed for 8x9, stride 2: {e}"),
    }
}
