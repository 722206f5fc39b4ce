//! The trainer's integration tests, one binary: the convolution kernels against
//! references, the networks and their gradients, the simulator against references and
//! through the CLI, and the training methods end to end on tiny data.

mod common;
mod conv_kernels;
mod iscl;
mod model_gradcheck;
mod model_networks;
mod nn_ops;
mod noise2score;
mod noise_correlation;
mod noise_rescaling;
mod simulate_cli;
mod simulate_reference;
mod train_loop;
mod weight_average;

/// Every test file under tests/ is a module of this binary: a file left undeclared here
/// would compile to nothing and its tests would silently not run (Cargo.toml sets
/// `autotests = false`).
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let is_module = if path.is_dir() {
            path.join("mod.rs").exists()
        } else {
            path.extension().is_some_and(|e| e == "rs") && name != "main"
        };
        if is_module {
            assert!(
                main.contains(&format!("\nmod {name};\n")),
                "tests/{name} is not declared in tests/main.rs: add `mod {name};`"
            );
        }
    }
}
