//! Flow-match Euler schedule: sigmas for both shift types against values printed by diffusers
//! 0.42.1 (bit-exact f32), mu helpers, config parsing and the Euler step.

use candle_core::{Device, Tensor};
use engine::scheduler::{layered_mu, linspace, FlowMatchEulerScheduler, SchedulerConfig, TimeShiftType};
use test_support as ts;

const LAYERED_JSON: &str = r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.36.0.dev0",
  "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": false, "max_image_seq_len": 8192,
  "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": false,
  "stochastic_sampling": false, "time_shift_type": "linear", "use_beta_sigmas": false,
  "use_dynamic_shifting": true, "use_exponential_sigmas": false, "use_karras_sigmas": false }"#;

const EDIT_JSON: &str = r#"{
  "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": false, "max_image_seq_len": 8192,
  "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
  "stochastic_sampling": false, "time_shift_type": "exponential", "use_beta_sigmas": false,
  "use_dynamic_shifting": true, "use_exponential_sigmas": false, "use_karras_sigmas": false }"#;

fn scheduler(json: &str) -> FlowMatchEulerScheduler {
    FlowMatchEulerScheduler::new(serde_json::from_str(json).unwrap()).unwrap()
}

/// Exact f32 equality, with the index in the message.
fn assert_bits(got: &[f32], want: &[f64], what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w as f32, "{what}[{i}]: got {g:e}, reference {w:e}");
    }
}

#[test]
fn configs_parse_with_hf_keys_and_falsy_terminal() {
    let layered: SchedulerConfig = serde_json::from_str(LAYERED_JSON).unwrap();
    assert_eq!(layered, SchedulerConfig::layered());
    assert_eq!(layered.shift_terminal, None);
    assert_eq!(layered.time_shift_type, TimeShiftType::Linear);
    let edit: SchedulerConfig = serde_json::from_str(EDIT_JSON).unwrap();
    assert_eq!(edit, SchedulerConfig::edit_2509());
    let null_terminal: SchedulerConfig = serde_json::from_str(r#"{"shift_terminal": null}"#).unwrap();
    assert_eq!(null_terminal.shift_terminal, None);
    // diffusers' own defaults for absent keys.
    assert_eq!(null_terminal.max_shift, 1.15);
    assert_eq!(null_terminal.time_shift_type, TimeShiftType::Exponential);
}

#[test]
fn unsupported_options_are_refused_by_name() {
    let cfg = SchedulerConfig {
        use_karras_sigmas: true,
        ..SchedulerConfig::layered()
    };
    let err = FlowMatchEulerScheduler::new(cfg).unwrap_err().to_string();
    assert!(err.contains("use_karras_sigmas"), "{err}");
}

#[test]
fn mu_helpers() {
    assert_eq!(layered_mu(1600), 2.5); // 640² bucket
    assert_eq!(layered_mu(4096), 4.0); // 1024² bucket
    let s = scheduler(EDIT_JSON);
    // 0.5 + 0.4·(4096 − 256)/(8192 − 256), as diffusers' calculate_shift prints it.
    assert!((s.edit_mu(4096) - 0.6935483870967742).abs() < 1e-15);
    assert!((s.edit_mu(256) - 0.5).abs() < 1e-15);
    assert!((s.edit_mu(8192) - 0.9).abs() < 1e-15);
}

#[test]
fn linear_shift_matches_diffusers() {
    let mut s = scheduler(LAYERED_JSON);
    s.set_timesteps(3, Some(2.5)).unwrap();
    // By hand: 2.5 / (2.5 + 1/σ − 1) for σ = 1, 2/3, 1/3 → 1, 5/6, 5/9; then the appended 0.
    assert_bits(
        s.sigmas(),
        &[1.0, 0.8333333134651184, 0.5555555820465088, 0.0],
        "sigmas N=3 mu=2.5",
    );
    assert_bits(
        s.timesteps(),
        &[1000.0, 833.3333129882812, 555.5556030273438],
        "timesteps N=3",
    );

    s.set_timesteps(50, Some(2.5)).unwrap();
    assert_eq!(s.sigmas().len(), 51);
    assert_bits(
        &s.sigmas()[..5],
        &[
            1.0,
            0.9919028282165527,
            0.9836065173149109,
            0.9751036763191223,
            0.9663865566253662,
        ],
        "N=50 head",
    );
    assert_bits(
        &s.sigmas()[48..],
        &[0.09433962404727936, 0.04854368790984154, 0.0],
        "N=50 tail",
    );

    s.set_timesteps(50, Some(4.0)).unwrap();
    assert_bits(
        &s.sigmas()[..5],
        &[
            1.0,
            0.9949238896369934,
            0.9896906614303589,
            0.9842931628227234,
            0.978723406791687,
        ],
        "mu=4 head",
    );
    assert_bits(
        &s.sigmas()[48..],
        &[0.1428571492433548, 0.07547169923782349, 0.0],
        "mu=4 tail",
    );
}

#[test]
fn exponential_shift_with_terminal_stretch_matches_diffusers() {
    let mut s = scheduler(EDIT_JSON);
    let mu = s.edit_mu(4096);
    s.set_timesteps(2, Some(mu)).unwrap();
    // The stretch makes the last non-zero sigma 0.02 (up to f32 rounding, as in the reference).
    assert_bits(s.sigmas(), &[1.0, 0.019999980926513672, 0.0], "N=2");

    s.set_timesteps(50, Some(mu)).unwrap();
    assert_bits(
        &s.sigmas()[..5],
        &[
            1.0,
            0.9897009134292603,
            0.9791914820671082,
            0.9684653282165527,
            0.9575156569480896,
        ],
        "N=50 head",
    );
    assert_bits(
        &s.sigmas()[48..],
        &[0.0584757924079895, 0.019999980926513672, 0.0],
        "N=50 tail",
    );
    assert_bits(
        &s.timesteps()[..3],
        &[1000.0, 989.700927734375, 979.1914672851562],
        "N=50 timesteps",
    );

    let mu = s.edit_mu(1000);
    s.set_timesteps(7, Some(mu)).unwrap();
    assert_bits(
        &s.sigmas()[..5],
        &[
            1.0,
            0.8882392644882202,
            0.7614115476608276,
            0.6162499785423279,
            0.44846922159194946,
        ],
        "N=7 head",
    );
    assert_bits(
        &s.sigmas()[5..],
        &[0.25233596563339233, 0.019999980926513672, 0.0],
        "N=7 tail",
    );
}

#[test]
fn layered_and_edit_input_spacings_agree() {
    // linspace(1, 0, N+1)[:-1] (Layered) and linspace(1, 1/N, N) (Edit) give the same schedule.
    let mut a = scheduler(LAYERED_JSON);
    let mut b = scheduler(LAYERED_JSON);
    for n in [1, 3, 20, 50, 97] {
        a.set_timesteps(n, Some(2.5)).unwrap();
        b.set_sigmas(&linspace(1.0, 0.0, n + 1)[..n], Some(2.5)).unwrap();
        assert_eq!(a.sigmas(), b.sigmas(), "N={n}");
    }
}

#[test]
fn missing_mu_and_bad_steps_are_errors() {
    let mut s = scheduler(LAYERED_JSON);
    assert!(s
        .set_timesteps(10, None)
        .unwrap_err()
        .to_string()
        .contains("mu is required"));
    assert!(s.set_timesteps(0, Some(1.0)).is_err());
    s.set_timesteps(2, Some(1.0)).unwrap();
    let x = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(s.step(&x, &x, 2).unwrap_err().to_string().contains("out of range"));
    assert!(s.model_sigma(2).is_err());
}

#[test]
fn euler_step_and_model_sigma() {
    let mut s = scheduler(LAYERED_JSON);
    s.set_timesteps(3, Some(2.5)).unwrap();
    let x = Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap();
    let v = Tensor::new(&[0.25f32, 4.0, -1.0], &Device::Cpu).unwrap();
    let sig = s.sigmas().to_vec();
    for i in 0..3 {
        let dt = sig[i + 1] - sig[i];
        let got = s.step(&x, &v, i).unwrap().to_vec1::<f32>().unwrap();
        let want = [1.0 + dt * 0.25, -2.0 + dt * 4.0, 0.5 - dt];
        assert_eq!(got, want, "step {i}");
    }
    // A bf16 velocity still steps in f32 and returns f32.
    let vb = v.to_dtype(candle_core::DType::BF16).unwrap();
    assert_eq!(s.step(&x, &vb, 0).unwrap().dtype(), candle_core::DType::F32);
    // The transformer sees timestep/1000 (f32), which is σ up to the last bit.
    for (i, &sigma) in sig.iter().take(3).enumerate() {
        let m = s.model_sigma(i).unwrap();
        assert_eq!(m, s.timesteps()[i] / 1000.0);
        assert!((m - sigma).abs() <= 1e-7);
    }
    // The final step lands on σ = 0: x + (0 − σ_last)·v.
    let last = s.step(&x, &v, 2).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(last[0], 1.0 - sig[2] * 0.25);
}

// ---- against tests/fixtures/reference/scheduler.safetensors (generate.py, record_scheduler) ----

fn reference() -> std::collections::HashMap<String, Tensor> {
    ts::load_reference("scheduler.safetensors")
}

fn checkpoint_scheduler(checkpoint: &str) -> FlowMatchEulerScheduler {
    let dir = engine::weights::ModelDir::open(ts::fixtures_dir().join(checkpoint)).unwrap();
    FlowMatchEulerScheduler::new(dir.read_json("scheduler", "scheduler_config.json").unwrap()).unwrap()
}

#[test]
fn sigmas_and_timesteps_match_the_fixtures_bit_for_bit() {
    let r = reference();
    let mut checked = 0;
    for (tag, checkpoint) in [
        ("layered", "tiny-qwen-image-layered"),
        ("edit", "tiny-qwen-image-edit-2509"),
    ] {
        let mut s = checkpoint_scheduler(checkpoint);
        for n in [1usize, 2, 3, 20, 50] {
            let seqs: &[usize] = if tag == "layered" {
                &[1536, 1600, 4096]
            } else {
                &[256, 384, 4096]
            };
            for &seq in seqs {
                let mu = if tag == "layered" {
                    layered_mu(seq)
                } else {
                    s.edit_mu(seq)
                };
                let key = format!("{tag}/n{n}/s{seq}");
                let want_sigmas = r[&format!("{key}/sigmas")].to_vec1::<f32>().unwrap();
                let want_timesteps = r[&format!("{key}/timesteps")].to_vec1::<f32>().unwrap();
                if want_sigmas.iter().any(|x| x.is_nan()) {
                    // diffusers divides by zero (one step with a terminal stretch); we refuse instead.
                    let err = s.set_timesteps(n, Some(mu)).unwrap_err().to_string();
                    assert!(err.contains("shift_terminal"), "{key}: {err}");
                    println!(
                        "{key}: reference has NaN sigmas; refused with: {}",
                        err.lines().next().unwrap_or("")
                    );
                    continue;
                }
                s.set_timesteps(n, Some(mu)).unwrap();
                assert_eq!(s.sigmas(), want_sigmas.as_slice(), "{key} sigmas");
                assert_eq!(s.timesteps(), want_timesteps.as_slice(), "{key} timesteps");
                checked += 1;
            }
        }
    }
    println!("{checked} schedules bit-identical to diffusers (max abs err 0)");
    assert_eq!(checked, 27);
}

#[test]
fn euler_step_matches_the_fixture() {
    let r = reference();
    let mut s = checkpoint_scheduler("tiny-qwen-image-layered");
    s.set_timesteps(3, Some(2.5)).unwrap();
    let out = s.step(&r["step/sample"], &r["step/model_output"], 0).unwrap();
    let err = ts::max_abs_diff(&out, &r["step/prev_sample"]);
    println!("step: max abs err {err:e}");
    assert_eq!(err, 0.0);
}

#[test]
fn the_runs_schedules_match_the_fixture_manifest() {
    // The sigmas and transformer inputs (timestep/1000) the recorded pipeline runs used.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ts::fixtures_dir().join("reference/manifest.json")).unwrap())
            .unwrap();
    for (run, checkpoint) in [
        ("layered_l2_cfgnorm", "tiny-qwen-image-layered"),
        ("layered_wide_nocfg", "tiny-qwen-image-layered"),
        ("edit_plus", "tiny-qwen-image-edit-2509"),
    ] {
        let case = &manifest["cases"][format!("run/{run}")];
        let mut s = checkpoint_scheduler(checkpoint);
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mu = if checkpoint.contains("layered") {
            layered_mu(case["s_cond"].as_u64().unwrap() as usize)
        } else {
            s.edit_mu(case["s_noisy"].as_u64().unwrap() as usize)
        };
        assert_eq!(mu, case["mu"].as_f64().unwrap(), "{run} mu");
        s.set_timesteps(n, Some(mu)).unwrap();
        let want: Vec<f32> = case["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(s.sigmas(), want.as_slice(), "{run} sigmas");
        // transformer_timesteps lists each transformer call (twice per step with CFG).
        let calls: Vec<f32> = case["transformer_timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let per_step = calls.len() / n;
        for i in 0..n {
            assert_eq!(
                s.model_sigma(i).unwrap(),
                calls[i * per_step],
                "{run} step {i} model sigma"
            );
        }
    }
}

#[test]
fn the_edit_runs_euler_steps_match_the_fixture() {
    // runs/edit_plus stores every step tensor in full: pack the recorded noise, then apply the
    // recorded guided velocities with our schedule; both steps must land on the reference latents.
    let r = candle_core::safetensors::load(
        ts::fixtures_dir().join("reference/runs/edit_plus.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut s = checkpoint_scheduler("tiny-qwen-image-edit-2509");
    s.set_timesteps(2, Some(s.edit_mu(384))).unwrap();
    let mut latents = engine::latents::pack(&r["noise"].squeeze(1).unwrap()).unwrap();
    for i in 0..2 {
        latents = s.step(&latents, &r[&format!("step{i}/v_guided")], i).unwrap();
        let want = &r[&format!("step{i}/latents_after")];
        let err = ts::max_abs_diff(&latents, want);
        println!("edit_plus step {i}: latents max abs err {err:e}");
        assert_eq!(err, 0.0, "step {i}");
    }
}
