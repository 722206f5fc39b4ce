//! Whole networks pass an f64 finite-difference gradient check: every parameter
//! (up to 24 coordinates each) and the input.

use candle_core::{DType, Device, Result, Tensor, Var};
use ldct_proto::arch::{
    Arch, Norm, PatchganConfig, Preset, RedcnnConfig, ResnetConfig, UnetConfig,
};
use ldct_train::model::{Init, Network};
use ldct_train::nn::gradcheck::{check_gradients, GradCheck};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Checks `sum(net(x) * r)` with respect to every parameter and the input.
fn check_network(arch: Arch, n: usize, h: usize, w: usize, train: bool) -> Result<GradCheck> {
    let name = arch.name.clone();
    let out = arch.output_shape(h, w).unwrap();
    // Kaiming keeps activations O(1) through the stack, so gradients are not tiny.
    let net = Network::new(arch, &Device::Cpu, DType::F64, Init::Kaiming, 1).unwrap();
    // Random biases, as after training: zero biases behind dead ReLUs put
    // pre-activations exactly on the ReLU kink, where finite differences see half
    // the slope.
    for (i, (spec, var)) in net.parameters().enumerate() {
        if spec.name.ends_with(".bias") {
            var.set(&(randn(&spec.shape, 100 + i as u64) * 0.1)?)?;
        }
    }
    let x = Var::from_tensor(&(randn(&[n, 1, h, w], 2) * 0.5)?)?;
    let r = randn(&[n, out.channels, out.h, out.w], 3);
    let params: Vec<(String, Var)> = net
        .parameters()
        .filter(|(s, _)| s.trainable())
        .map(|(s, v)| (s.name.clone(), v.clone()))
        .collect();
    let mut vars: Vec<(&str, &Var)> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
    vars.push(("input", &x));
    let check = check_gradients(
        &vars,
        || (net.forward_t(&x, train)? * &r)?.sum_all(),
        1e-6,
        24,
    )?;
    eprintln!("{name}: {check}");
    Ok(check)
}

#[test]
fn tiny_resnet_generator_gradient_check() -> Result<()> {
    // ngf 4, one residual block, 8x8: reflection pads, 7x7 and stride-2 convs,
    // instance norms, transposed convs, tanh and the global residual.
    let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        norm: Norm::Instance,
        ..Default::default()
    }))
    .unwrap();
    let check = check_network(arch, 2, 8, 8, true)?;
    assert!(check.checked() > 250);
    assert!(check.passes(1e-7, 1e-5), "{check}");
    Ok(())
}

#[test]
fn tiny_unet_with_batch_norm_gradient_check() -> Result<()> {
    let arch = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 2,
        depth: 2,
        norm: Norm::Batch,
        ..Default::default()
    }))
    .unwrap();
    let check = check_network(arch, 2, 8, 12, true)?;
    assert!(check.passes(1e-7, 1e-5), "{check}");
    Ok(())
}

#[test]
fn tiny_redcnn_and_patchgan_gradient_check() -> Result<()> {
    let redcnn = Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
        filters: 3,
        kernel: 3,
    }))
    .unwrap();
    let check = check_network(redcnn, 1, 12, 13, true)?;
    assert!(check.passes(1e-7, 1e-5), "{check}");
    let patchgan = Arch::from_preset(&Preset::Patchgan(PatchganConfig {
        ndf: 2,
        n_layers: 2,
        norm: Norm::InstanceAffine,
    }))
    .unwrap();
    let check = check_network(patchgan, 1, 16, 16, true)?;
    assert!(check.passes(1e-7, 1e-5), "{check}");
    Ok(())
}
