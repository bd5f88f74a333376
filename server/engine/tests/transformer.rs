//! QwenImageTransformer2DModel against diffusers 0.42.1 on the tiny checkpoints
//! (`tests/fixtures/reference/transformer.safetensors`, written by `tests/reference/generate.py`,
//! `record_transformer`): RoPE tables, timestep features and embedding, input projections, every
//! block's text/image outputs, the output norm and the velocity; batched CFG against separate
//! forwards; and the shape errors a caller can make.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use engine::transformer::cfg::{combine, pad_and_stack, split_cond_uncond};
use engine::transformer::embeddings::timestep_sinusoid;
use engine::transformer::{Config, QwenImageTransformer, RopeVariant};
use engine::weights::ModelDir;
use test_support as ts;

/// Relative tolerance of the issue: max |ours − ref| ≤ 1e-4 · max |ref|.
const RTOL: f32 = 1e-4;

fn reference(file: &str) -> HashMap<String, Tensor> {
    ts::load_reference(file)
}

fn model(checkpoint: &str) -> QwenImageTransformer {
    let dir = ModelDir::open(ts::fixtures_dir().join(checkpoint)).unwrap();
    let cfg: Config = dir.read_json("transformer", "config.json").unwrap();
    let vb = dir.var_builder("transformer", DType::F32, &Device::Cpu).unwrap();
    QwenImageTransformer::new(&cfg, vb).unwrap()
}

/// Max abs error and that error relative to the reference's largest magnitude; asserts ≤ RTOL.
fn check(name: &str, ours: &Tensor, reference: &Tensor) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
    let ours = ours.to_dtype(DType::F32).unwrap();
    let abs = ts::max_abs_diff(&ours, reference);
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    let rel = abs / scale;
    println!("{name:<32} max abs err {abs:.3e}  rel {rel:.3e}  (ref max {scale:.3e})");
    assert!(rel <= RTOL, "{name}: relative error {rel:e} > {RTOL:e} (abs {abs:e})");
    rel
}

struct Case {
    model: QwenImageTransformer,
    r: HashMap<String, Tensor>,
    tag: &'static str,
    img_shapes: Vec<(usize, usize, usize)>,
    additional_t_cond: Option<Tensor>,
}

impl Case {
    fn layered() -> Self {
        Self {
            model: model("tiny-qwen-image-layered"),
            r: reference("transformer.safetensors"),
            tag: "layered",
            // generate.py: 2 layers + composite of 3×4 tokens, then the 3×4 condition frame.
            img_shapes: vec![(1, 3, 4); 4],
            additional_t_cond: Some(Tensor::new(&[0u32, 1], &Device::Cpu).unwrap()),
        }
    }

    fn edit() -> Self {
        Self {
            model: model("tiny-qwen-image-edit-2509"),
            r: reference("transformer.safetensors"),
            tag: "edit",
            img_shapes: vec![(1, 4, 6), (1, 6, 4)],
            additional_t_cond: None,
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        let key = format!("{}/{name}", self.tag);
        self.r.get(&key).unwrap_or_else(|| panic!("fixture {key} missing"))
    }

    fn mask(&self) -> Option<&Tensor> {
        self.r.get(&format!("{}/in/encoder_hidden_states_mask", self.tag))
    }

    /// Runs the recorded forward and checks every stage; returns the worst relative error.
    fn check_all_stages(&self) -> f32 {
        let m = &self.model;
        let img = self.get("in/hidden_states");
        let txt = self.get("in/encoder_hidden_states");
        let sigma = self.get("in/timestep");
        let tag = self.tag;
        let mut worst = 0f32;

        let rope = m.rope_tables(&self.img_shapes, txt.dim(1).unwrap()).unwrap();
        worst = worst.max(check(
            &format!("{tag}/rope_img_cos"),
            &rope.img_cos().unwrap(),
            self.get("rope_img_cos"),
        ));
        worst = worst.max(check(
            &format!("{tag}/rope_img_sin"),
            &rope.img_sin().unwrap(),
            self.get("rope_img_sin"),
        ));
        worst = worst.max(check(
            &format!("{tag}/rope_txt_cos"),
            &rope.txt_cos().unwrap(),
            self.get("rope_txt_cos"),
        ));
        worst = worst.max(check(
            &format!("{tag}/rope_txt_sin"),
            &rope.txt_sin().unwrap(),
            self.get("rope_txt_sin"),
        ));
        worst = worst.max(check(
            &format!("{tag}/time_proj"),
            &timestep_sinusoid(sigma).unwrap(),
            self.get("time_proj"),
        ));

        let (out, trace) = m
            .forward_with_trace(
                img,
                txt,
                self.mask(),
                sigma,
                &self.img_shapes,
                self.additional_t_cond.as_ref(),
            )
            .unwrap();
        worst = worst.max(check(&format!("{tag}/temb"), &trace.temb, self.get("temb")));
        worst = worst.max(check(&format!("{tag}/img_in"), &trace.img_in, self.get("img_in")));
        worst = worst.max(check(&format!("{tag}/txt_norm"), &trace.txt_norm, self.get("txt_norm")));
        worst = worst.max(check(&format!("{tag}/txt_in"), &trace.txt_in, self.get("txt_in")));
        assert_eq!(trace.blocks.len(), 2);
        for (i, (bimg, btxt)) in trace.blocks.iter().enumerate() {
            worst = worst.max(check(
                &format!("{tag}/block{i}/img"),
                bimg,
                self.get(&format!("block{i}/img")),
            ));
            // Padded text rows (masked keys) still get computed as queries; the reference does
            // the same, so they are compared too.
            worst = worst.max(check(
                &format!("{tag}/block{i}/txt"),
                btxt,
                self.get(&format!("block{i}/txt")),
            ));
        }
        worst = worst.max(check(&format!("{tag}/norm_out"), &trace.norm_out, self.get("norm_out")));
        worst = worst.max(check(&format!("{tag}/output"), &out, self.get("output")));
        println!("{tag}: worst relative error over all stages {worst:.3e}");
        worst
    }
}

#[test]
fn layered_forward_matches_reference_at_every_stage() {
    let case = Case::layered();
    assert_eq!(
        case.model.config(),
        &Config {
            num_layers: 2,
            attention_head_dim: 32,
            num_attention_heads: 2,
            joint_attention_dim: 32,
            axes_dims_rope: [8, 12, 12],
            ..Config::layered()
        }
    );
    case.check_all_stages();
}

#[test]
fn edit_forward_matches_reference_at_every_stage() {
    let case = Case::edit();
    assert!(!case.model.config().use_layer3d_rope && !case.model.config().use_additional_t_cond);
    case.check_all_stages();
}

#[test]
fn layered_rope_for_the_640_bucket_matches_reference() {
    // generate.py stores every 50th row of the image table of [(1,40,40)]*3 + [(1,40,40)].
    let case = Case::layered();
    let rope = case.model.rope_tables(&[(1, 40, 40); 4], 8).unwrap();
    let rows: Vec<u32> = (0..6400u32).step_by(50).collect();
    let rows = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    let img_cos = rope.img_cos().unwrap().index_select(&rows, 0).unwrap();
    let img_sin = rope.img_sin().unwrap().index_select(&rows, 0).unwrap();
    check("rope640_img_cos", &img_cos, case.get("rope640_img_cos"));
    check("rope640_img_sin", &img_sin, case.get("rope640_img_sin"));
    check("rope640_txt_cos", &rope.txt_cos().unwrap(), case.get("rope640_txt_cos"));
    check("rope640_txt_sin", &rope.txt_sin().unwrap(), case.get("rope640_txt_sin"));
}

#[test]
fn rope_positions_follow_both_variants() {
    let layered = engine::transformer::rope::Rope::new([8, 12, 12], RopeVariant::Layer3d, &Device::Cpu);
    // 2 generated frames + composite (3 × (1,3,4)) and the condition frame.
    let (pos, m) = layered.image_positions(&[(1, 3, 4); 4]).unwrap();
    assert_eq!(pos.len(), 48);
    // Odd height 3 is centred as −2..0, width 4 as −2..1.
    assert_eq!(pos[0], [0, -2, -2]);
    assert_eq!(pos[11], [0, 0, 1]);
    assert_eq!(pos[12], [1, -2, -2]);
    assert_eq!(pos[24], [2, -2, -2]);
    assert_eq!(pos[36], [-1, -2, -2], "the condition frame sits at −1");
    assert_eq!(m, 3, "text offset = max(h/2, w/2, segments − 1) = max(1, 2, 3)");

    let base = engine::transformer::rope::Rope::new([8, 12, 12], RopeVariant::Base, &Device::Cpu);
    let (pos, m) = base.image_positions(&[(1, 4, 6), (1, 6, 4)]).unwrap();
    assert_eq!(pos[0], [0, -2, -3]);
    assert_eq!(pos[24], [1, -3, -2], "frame = segment index");
    assert_eq!(m, 3);

    // Same shapes and text length → the cached tables.
    let case = Case::layered();
    let a = case.model.rope_tables(&[(1, 3, 4); 4], 6).unwrap();
    let b = case.model.rope_tables(&[(1, 3, 4); 4], 6).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));

    // A Layer3D condition segment must be a single frame.
    let err = layered
        .image_positions(&[(1, 2, 2), (2, 2, 2)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("condition segment"), "{err}");
}

#[test]
fn batched_masked_forward_equals_the_reference_alone_forward() {
    // Item 1 of the batch has 3 valid text tokens of 6; diffusers' forward of it alone (text cut
    // to 3 tokens, no mask) is recorded. Ours batched must match it.
    let case = Case::layered();
    let out = case
        .model
        .forward(
            case.get("in/hidden_states"),
            case.get("in/encoder_hidden_states"),
            case.mask(),
            case.get("in/timestep"),
            &case.img_shapes,
            case.additional_t_cond.as_ref(),
        )
        .unwrap();
    check(
        "batched item 1 vs reference alone",
        &out.narrow(0, 1, 1).unwrap(),
        case.get("sample1_alone_output"),
    );
}

#[test]
fn batched_cfg_equals_two_separate_forwards() {
    for case in [Case::layered(), Case::edit()] {
        let m = &case.model;
        let img = case.get("in/hidden_states").narrow(0, 0, 1).unwrap();
        let sigma = case.get("in/timestep").narrow(0, 0, 1).unwrap();
        let txt = case.get("in/encoder_hidden_states").narrow(0, 0, 1).unwrap();
        // cond: all text tokens; uncond: a shorter, different prompt.
        let cond = txt.clone();
        let uncond = (txt.narrow(1, 0, 2).unwrap() * -0.5).unwrap();
        let t_cond = case
            .additional_t_cond
            .as_ref()
            .map(|_| Tensor::new(&[0u32], &Device::Cpu).unwrap());

        let alone_c = m
            .forward(&img, &cond, None, &sigma, &case.img_shapes, t_cond.as_ref())
            .unwrap();
        let alone_u = m
            .forward(&img, &uncond, None, &sigma, &case.img_shapes, t_cond.as_ref())
            .unwrap();

        let (txt2, mask2) = pad_and_stack(&cond, None, &uncond, None).unwrap();
        assert_eq!(txt2.dims(), &[2, cond.dim(1).unwrap(), cond.dim(2).unwrap()]);
        let img2 = Tensor::cat(&[&img, &img], 0).unwrap();
        let sigma2 = Tensor::cat(&[&sigma, &sigma], 0).unwrap();
        let t2 = t_cond.as_ref().map(|t| Tensor::cat(&[t, t], 0).unwrap());
        let both = m
            .forward(&img2, &txt2, Some(&mask2), &sigma2, &case.img_shapes, t2.as_ref())
            .unwrap();
        let (vc, vu) = split_cond_uncond(&both).unwrap();

        let (dc, du) = (ts::max_abs_diff(&vc, &alone_c), ts::max_abs_diff(&vu, &alone_u));
        println!("{}: batched CFG vs separate: cond {dc:.3e}, uncond {du:.3e}", case.tag);
        assert!(dc <= 1e-5 && du <= 1e-5, "{}: cond {dc:e}, uncond {du:e}", case.tag);
        // And the padding mattered: without the mask the uncond row changes.
        let unmasked = m
            .forward(&img2, &txt2, None, &sigma2, &case.img_shapes, t2.as_ref())
            .unwrap();
        let (_, vu_unmasked) = split_cond_uncond(&unmasked).unwrap();
        assert!(
            ts::max_abs_diff(&vu_unmasked, &alone_u) > 1e-3,
            "{}: the key mask had no effect",
            case.tag
        );
    }
}

#[test]
fn pad_and_stack_pads_the_shorter_prompt_and_masks_it() {
    let dev = Device::Cpu;
    let a = Tensor::ones((1, 3, 4), DType::F32, &dev).unwrap();
    let b = Tensor::full(2f32, (1, 5, 4), &dev).unwrap();
    let b_mask = Tensor::new(&[[1u32, 1, 1, 1, 0]], &dev).unwrap();
    let (txt, mask) = pad_and_stack(&a, None, &b, Some(&b_mask)).unwrap();
    assert_eq!(txt.dims(), &[2, 5, 4]);
    assert_eq!(
        mask.to_vec2::<u8>().unwrap(),
        vec![vec![1, 1, 1, 0, 0], vec![1, 1, 1, 1, 0]]
    );
    let rows = txt.sum(2).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(rows, vec![vec![4.0, 4.0, 4.0, 0.0, 0.0], vec![8.0; 5]]);

    let bad = Tensor::ones((1, 4), DType::U8, &dev).unwrap();
    let err = pad_and_stack(&a, Some(&bad), &b, None).unwrap_err().to_string();
    assert!(err.contains("cond mask") && err.contains("[1, 3]"), "{err}");
    let wide = Tensor::ones((1, 3, 5), DType::F32, &dev).unwrap();
    assert!(pad_and_stack(&a, None, &wide, None).is_err());
}

#[test]
fn cfg_combine_by_hand() {
    let dev = Device::Cpu;
    let cond = Tensor::new(&[[[3f32, 4.0], [1.0, 0.0]]], &dev).unwrap();
    let uncond = Tensor::new(&[[[1f32, 2.0], [0.0, 0.0]]], &dev).unwrap();
    // u + 2(c − u) = 2c − u.
    let plain = combine(&cond, &uncond, 2.0, false).unwrap().to_vec3::<f32>().unwrap();
    assert_eq!(plain, vec![vec![vec![5.0, 6.0], vec![2.0, 0.0]]]);
    // Normalised per token: direction of 2c − u, norm of c (5 and 1).
    let norm = combine(&cond, &uncond, 2.0, true).unwrap().to_vec3::<f32>().unwrap();
    let k = 5.0 / (61f32).sqrt();
    assert!((norm[0][0][0] - 5.0 * k).abs() < 1e-6 && (norm[0][0][1] - 6.0 * k).abs() < 1e-6);
    assert_eq!(norm[0][1], vec![1.0, 0.0]);
}

#[test]
fn cfg_combine_matches_the_recorded_guided_velocities() {
    // Per-step velocities of the recorded pipeline runs (every 37th token; the norm is per token
    // over channels, so striding tokens does not change it).
    for (run, scale, normalize, steps) in [
        ("layered_l2_cfgnorm", 4.0, true, 2),
        ("layered_l3_cfg", 3.0, false, 2),
        ("edit_plus", 4.0, true, 2),
    ] {
        let r = reference(&format!("runs/{run}.safetensors"));
        for i in 0..steps {
            let g = |n: &str| {
                r.get(&format!("step{i}/{n}"))
                    .unwrap_or_else(|| panic!("{run} step{i}/{n}"))
            };
            let v = combine(g("v_cond"), g("v_uncond"), scale, normalize).unwrap();
            check(&format!("{run}/step{i}/v_guided"), &v, g("v_guided"));
        }
    }
}

/// Zero inputs of the right shapes for the layered tiny model.
fn layered_inputs(dev: &Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let img = Tensor::zeros((2, 48, 64), DType::F32, dev).unwrap();
    let txt = Tensor::zeros((2, 6, 32), DType::F32, dev).unwrap();
    let sigma = Tensor::new(&[0.5f32, 0.5], dev).unwrap();
    let t = Tensor::new(&[0u32, 0], dev).unwrap();
    (img, txt, sigma, t)
}

#[test]
fn shape_errors_a_caller_can_make_are_clear() {
    let case = Case::layered();
    let m = &case.model;
    let dev = Device::Cpu;
    let (img, txt, sigma, t) = layered_inputs(&dev);
    let shapes = [(1, 3, 4); 4];
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();

    // The right inputs work.
    assert_eq!(
        m.forward(&img, &txt, None, &sigma, &shapes, Some(&t)).unwrap().dims(),
        &[2, 48, 64]
    );

    // Unpacked latents (16 channels) instead of packed tokens.
    let img16 = Tensor::zeros((2, 48, 16), DType::F32, &dev).unwrap();
    let e = err(m.forward(&img16, &txt, None, &sigma, &shapes, Some(&t)));
    assert!(e.contains("16 channels") && e.contains("in_channels=64"), "{e}");
    // A 5-D latent tensor.
    let img5 = Tensor::zeros((2, 3, 16, 4, 6), DType::F32, &dev).unwrap();
    assert!(err(m.forward(&img5, &txt, None, &sigma, &shapes, Some(&t))).contains("[batch, image tokens, 64]"));
    // img_shapes that do not add up to S_img (e.g. the condition segment forgotten).
    let e = err(m.forward(&img, &txt, None, &sigma, &shapes[..3], Some(&t)));
    assert!(e.contains("36 tokens") && e.contains("img has 48"), "{e}");
    assert!(err(m.forward(&img, &txt, None, &sigma, &[], Some(&t))).contains("img_shapes is empty"));
    // Text of the wrong width (e.g. un-projected or wrong encoder).
    let txt_bad = Tensor::zeros((2, 6, 64), DType::F32, &dev).unwrap();
    assert!(err(m.forward(&img, &txt_bad, None, &sigma, &shapes, Some(&t))).contains("joint_attention_dim=32"));
    // Batch mismatch between image and text.
    let txt1 = txt.narrow(0, 0, 1).unwrap();
    assert!(err(m.forward(&img, &txt1, None, &sigma, &shapes, Some(&t))).contains("txt has batch 1"));
    // Mask of the wrong shape.
    let mask = Tensor::ones((2, 5), DType::U8, &dev).unwrap();
    let e = err(m.forward(&img, &txt, Some(&mask), &sigma, &shapes, Some(&t)));
    assert!(e.contains("txt_mask") && e.contains("[2, 5]"), "{e}");
    // sigma of the wrong shape (a scalar instead of [B]).
    let s0 = Tensor::new(0.5f32, &dev).unwrap();
    assert!(err(m.forward(&img, &txt, None, &s0, &shapes, Some(&t))).contains("sigma has shape"));
    // The layered model needs additional_t_cond, with 0/1 values.
    assert!(err(m.forward(&img, &txt, None, &sigma, &shapes, None)).contains("pass additional_t_cond"));
    let t2 = Tensor::new(&[0u32, 2], &dev).unwrap();
    assert!(err(m.forward(&img, &txt, None, &sigma, &shapes, Some(&t2))).contains("0 or 1"));

    // The edit model refuses it.
    let edit = Case::edit();
    let img = Tensor::zeros((1, 48, 64), DType::F32, &dev).unwrap();
    let txt = Tensor::zeros((1, 5, 32), DType::F32, &dev).unwrap();
    let sigma = Tensor::new(&[0.5f32], &dev).unwrap();
    let t1 = Tensor::new(&[0u32], &dev).unwrap();
    let e = err(edit
        .model
        .forward(&img, &txt, None, &sigma, &edit.img_shapes, Some(&t1)));
    assert!(e.contains("use_additional_t_cond=false"), "{e}");
}

#[test]
fn bf16_matches_diffusers_bf16() {
    // The CUDA build runs bf16 weights and activations through this same code. Against diffusers'
    // own bf16 forward (tests/reference/extra_transformer.py) it must agree to bf16 precision. Both
    // round the timestep to bf16 first, which alone moves the tiny model's output ~8% from f32, so
    // this fails if that cast is dropped.
    let extra = candle_core::safetensors::load(
        ts::fixtures_dir().join("reference/extra/transformer_bf16.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (case, checkpoint) in [
        (Case::layered(), "tiny-qwen-image-layered"),
        (Case::edit(), "tiny-qwen-image-edit-2509"),
    ] {
        let dir = ModelDir::open(ts::fixtures_dir().join(checkpoint)).unwrap();
        let cfg: Config = dir.read_json("transformer", "config.json").unwrap();
        let m = QwenImageTransformer::new(&cfg, dir.var_builder("transformer", DType::BF16, &Device::Cpu).unwrap())
            .unwrap();
        let out = m
            .forward(
                case.get("in/hidden_states"),
                case.get("in/encoder_hidden_states"),
                case.mask(),
                case.get("in/timestep"),
                &case.img_shapes,
                case.additional_t_cond.as_ref(),
            )
            .unwrap();
        assert_eq!(out.dtype(), DType::BF16);
        let out = out.to_dtype(DType::F32).unwrap();
        let rel = |reference: &Tensor| {
            let abs = ts::max_abs_diff(&out, reference);
            abs / reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        let vs_bf16 = rel(&extra[&format!("{}/output_bf16", case.tag)]);
        let vs_f32 = rel(case.get("output"));
        println!(
            "{}: bf16 output rel err vs diffusers bf16 {vs_bf16:.3e}, vs diffusers f32 {vs_f32:.3e}",
            case.tag
        );
        assert!(
            vs_bf16 < 3e-2,
            "{}: bf16 output differs from diffusers bf16 by {vs_bf16}",
            case.tag
        );
    }
}

#[test]
fn unsupported_configs_are_refused_by_key() {
    let cfg = Config {
        guidance_embeds: true,
        ..Config::edit_2509()
    };
    assert!(cfg.validate().unwrap_err().to_string().contains("guidance_embeds"));
    // Edit-2511's flag is implemented (tests/edit_2511.rs).
    let cfg = Config {
        zero_cond_t: true,
        ..Config::edit_2509()
    };
    assert!(cfg.validate().is_ok());
    let cfg = Config {
        axes_dims_rope: [16, 56, 54],
        ..Config::edit_2509()
    };
    assert!(cfg.validate().unwrap_err().to_string().contains("axes_dims_rope"));
    assert!(Config::layered().validate().is_ok());
    assert_eq!(Config::layered().inner_dim(), 3072);
    assert_eq!(Config::layered().out_token_channels(), 64);
}

/// Sequence parallelism (issue 21): the image tokens sharded over two model copies on their own
/// threads (two GPUs on a CUDA host), heads exchanged in each attention, equals the one-device
/// forward against the reference — for the recorded inputs, and for batched CFG with a padded,
/// masked negative prompt. An odd token count gives the shards unequal lengths.
#[test]
fn sequence_parallel_equals_the_single_device_forward() {
    use engine::transformer::SequenceParallel;
    for case in [Case::layered(), Case::edit()] {
        let main = &case.model;
        let peer = model(if case.tag == "layered" {
            "tiny-qwen-image-layered"
        } else {
            "tiny-qwen-image-edit-2509"
        });
        let sp = SequenceParallel::new(main, vec![peer]).unwrap();
        assert_eq!(sp.ranks(), 2);
        let img = case.get("in/hidden_states");
        let txt = case.get("in/encoder_hidden_states");
        let sigma = case.get("in/timestep");
        let out = sp
            .forward(
                main,
                img,
                txt,
                case.mask(),
                sigma,
                &case.img_shapes,
                case.additional_t_cond.as_ref(),
            )
            .unwrap();
        check(
            &format!("{}/sequence-parallel output", case.tag),
            &out,
            case.get("output"),
        );

        // Batched CFG with a shorter negative prompt (padded and masked), one row of each.
        let img1 = img.narrow(0, 0, 1).unwrap();
        let sigma1 = sigma.narrow(0, 0, 1).unwrap();
        let cond = txt.narrow(0, 0, 1).unwrap();
        let uncond = (cond.narrow(1, 0, 2).unwrap() * -0.5).unwrap();
        let (txt2, mask2) = pad_and_stack(&cond, None, &uncond, None).unwrap();
        let img2 = Tensor::cat(&[&img1, &img1], 0).unwrap();
        let sigma2 = Tensor::cat(&[&sigma1, &sigma1], 0).unwrap();
        let t2 = case
            .additional_t_cond
            .as_ref()
            .map(|_| Tensor::new(&[0u32, 0], &Device::Cpu).unwrap());
        let one = main
            .forward(&img2, &txt2, Some(&mask2), &sigma2, &case.img_shapes, t2.as_ref())
            .unwrap();
        let spread = sp
            .forward(main, &img2, &txt2, Some(&mask2), &sigma2, &case.img_shapes, t2.as_ref())
            .unwrap();
        let diff = ts::max_abs_diff(&spread, &one);
        println!("{}: sequence-parallel batched CFG vs one device: {diff:.3e}", case.tag);
        assert!(diff <= 1e-5, "{}: {diff:e}", case.tag);
    }
    // Two heads do not split over three devices.
    let main = model("tiny-qwen-image-layered");
    let peers = vec![model("tiny-qwen-image-layered"), model("tiny-qwen-image-layered")];
    let err = SequenceParallel::new(&main, peers).unwrap_err().to_string();
    assert!(err.contains("2 attention heads to split evenly"), "{err}");
}
