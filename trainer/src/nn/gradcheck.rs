//! Finite-difference gradient checks (for tests of ops and networks, best in f64).
//!
//! [`check_gradients`] runs a scalar loss once with autograd, then perturbs
//! chosen coordinates of each variable by `+-eps` and compares the central
//! difference `(L(x + eps) - L(x - eps)) / (2 eps)` with the autograd gradient.

use candle_core::{bail, DType, Result, Tensor, Var};

/// Outcome for one variable.
#[derive(Debug, Clone, PartialEq)]
pub struct VarCheck {
    pub name: String,
    /// Coordinates compared.
    pub checked: usize,
    /// Largest `|autograd - numeric|`.
    pub max_abs_err: f64,
    /// Largest `|autograd - numeric| / max(|autograd|, |numeric|)` over the
    /// coordinates whose gradient is at least `1e-6` in magnitude.
    pub max_rel_err: f64,
    /// Largest `|numeric|` seen (to tell a vanishing gradient from a good one).
    pub max_grad: f64,
    /// Every compared coordinate: `(flat index, autograd, numeric)`.
    pub samples: Vec<(usize, f64, f64)>,
}

/// Outcome of a check, one entry per variable.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheck {
    pub vars: Vec<VarCheck>,
}

impl GradCheck {
    pub fn max_abs_err(&self) -> f64 {
        self.vars.iter().map(|v| v.max_abs_err).fold(0.0, f64::max)
    }

    pub fn max_rel_err(&self) -> f64 {
        self.vars.iter().map(|v| v.max_rel_err).fold(0.0, f64::max)
    }

    pub fn checked(&self) -> usize {
        self.vars.iter().map(|v| v.checked).sum()
    }

    /// Whether every coordinate satisfies `|a - n| <= atol + rtol * max(|a|, |n|)`.
    pub fn passes(&self, atol: f64, rtol: f64) -> bool {
        self.vars
            .iter()
            .flat_map(|v| &v.samples)
            .all(|&(_, a, n)| (a - n).abs() <= atol + rtol * a.abs().max(n.abs()))
    }
}

impl std::fmt::Display for GradCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} coordinates, max abs err {:.3e}, max rel err {:.3e}",
            self.checked(),
            self.max_abs_err(),
            self.max_rel_err()
        )?;
        for v in &self.vars {
            writeln!(
                f,
                "  {:<28} n={:<4} abs {:.3e} rel {:.3e} |grad|max {:.3e}",
                v.name, v.checked, v.max_abs_err, v.max_rel_err, v.max_grad
            )?;
        }
        Ok(())
    }
}

/// Compares autograd with central finite differences for a scalar `loss` of the
/// `vars` (f64 variables). At most `max_coords` coordinates per variable are
/// perturbed, evenly spread over it (all of them when it is small enough).
pub fn check_gradients(
    vars: &[(&str, &Var)],
    loss: impl Fn() -> Result<Tensor>,
    eps: f64,
    max_coords: usize,
) -> Result<GradCheck> {
    for (name, v) in vars {
        if v.dtype() != DType::F64 {
            bail!(
                "gradient check of {name}: use f64 variables, not {:?}",
                v.dtype()
            )
        }
    }
    let grads = loss()?.backward()?;
    let mut out = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; var.elem_count()],
        };
        let original = var.as_tensor().detach().copy()?;
        let base: Vec<f64> = original.flatten_all()?.to_vec1()?;
        let n = base.len();
        let step = n.div_ceil(max_coords.max(1)).max(1);
        let mut check = VarCheck {
            name: name.to_string(),
            checked: 0,
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            max_grad: 0.0,
            samples: Vec::new(),
        };
        let eval_at = |values: &[f64]| -> Result<f64> {
            var.set(&Tensor::from_slice(
                values,
                original.shape(),
                original.device(),
            )?)?;
            loss()?.to_scalar::<f64>()
        };
        let mut values = base.clone();
        for i in (0..n).step_by(step) {
            values[i] = base[i] + eps;
            let plus = eval_at(&values)?;
            values[i] = base[i] - eps;
            let minus = eval_at(&values)?;
            values[i] = base[i];
            let numeric = (plus - minus) / (2.0 * eps);
            let a = analytic[i];
            let abs = (a - numeric).abs();
            let scale = a.abs().max(numeric.abs());
            check.max_abs_err = check.max_abs_err.max(abs);
            check.max_grad = check.max_grad.max(numeric.abs());
            if scale >= 1e-6 {
                check.max_rel_err = check.max_rel_err.max(abs / scale);
            }
            check.checked += 1;
            check.samples.push((i, a, numeric));
        }
        var.set(&original)?;
        out.push(check);
    }
    Ok(GradCheck { vars: out })
}
