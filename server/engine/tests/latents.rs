//! Latent packing: the token/channel layout of §6, round trips, and the errors a caller can hit.

use candle_core::{DType, Device, Tensor};
use engine::latents::{pack, pack_layered, unpack, unpack_layered};
use test_support as ts;

fn arange(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

#[test]
fn layered_packing_follows_the_reference_layout() {
    let (b, l, c, h, w) = (2, 3, 16, 4, 6);
    let x = arange(&[b, l, c, h, w]);
    let packed = pack_layered(&x).unwrap();
    assert_eq!(packed.dims(), &[b, l * (h / 2) * (w / 2), 4 * c]);
    let flat_x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let p = packed.to_vec3::<f32>().unwrap();
    let at = |bi: usize, li: usize, ci: usize, y: usize, xx: usize| flat_x[(((bi * l + li) * c + ci) * h + y) * w + xx];
    for (bi, rows) in p.iter().enumerate() {
        for li in 0..l {
            for i in 0..h / 2 {
                for j in 0..w / 2 {
                    let token = li * (h / 2) * (w / 2) + i * (w / 2) + j;
                    for ci in 0..c {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                assert_eq!(
                                    rows[token][ci * 4 + dy * 2 + dx],
                                    at(bi, li, ci, 2 * i + dy, 2 * j + dx),
                                    "b{bi} l{li} c{ci} i{i} j{j} dy{dy} dx{dx}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn single_frame_packing_is_layered_packing_with_one_frame() {
    let x = arange(&[2, 16, 1, 4, 6]);
    let single = pack(&x).unwrap();
    let layered = pack_layered(&x.permute((0, 2, 1, 3, 4)).unwrap()).unwrap();
    assert_eq!(single.to_vec3::<f32>().unwrap(), layered.to_vec3::<f32>().unwrap());
    // A 4-D input without the frame axis packs the same.
    let four_d = pack(&x.squeeze(2).unwrap()).unwrap();
    assert_eq!(single.to_vec3::<f32>().unwrap(), four_d.to_vec3::<f32>().unwrap());
}

#[test]
fn unpack_inverts_pack() {
    let x = arange(&[2, 3, 16, 4, 6]);
    let back = unpack_layered(&pack_layered(&x).unwrap(), 3, 4, 6).unwrap();
    assert_eq!(back.dims(), x.dims());
    let diff = ts::max_abs_diff(&back, &x);
    assert_eq!(diff, 0.0);

    let y = arange(&[1, 16, 1, 8, 2]);
    let back = unpack(&pack(&y).unwrap(), 8, 2).unwrap();
    assert_eq!(back.dims(), y.dims());
    let diff = ts::max_abs_diff(&back, &y);
    assert_eq!(diff, 0.0);
}

#[test]
fn odd_sizes_and_wrong_token_counts_are_clear_errors() {
    let odd = Tensor::zeros((1, 2, 16, 5, 4), DType::F32, &Device::Cpu).unwrap();
    let err = pack_layered(&odd).unwrap_err().to_string();
    assert!(err.contains("must be even") && err.contains("5×4"), "{err}");
    let odd = Tensor::zeros((1, 16, 1, 4, 3), DType::F32, &Device::Cpu).unwrap();
    let err = pack(&odd).unwrap_err().to_string();
    assert!(err.contains("must be even"), "{err}");

    let tokens = Tensor::zeros((1, 12, 64), DType::F32, &Device::Cpu).unwrap();
    let err = unpack_layered(&tokens, 2, 4, 4).unwrap_err().to_string();
    assert!(err.contains("12 tokens") && err.contains("make 8"), "{err}");
    let err = unpack(&tokens, 4, 3).unwrap_err().to_string();
    assert!(err.contains("must be even"), "{err}");
    let err = unpack(&tokens, 4, 4).unwrap_err().to_string();
    assert!(err.contains("12 tokens"), "{err}");

    let wrong_rank = Tensor::zeros((1, 16, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(pack(&wrong_rank).unwrap_err().to_string().contains("expected latents"));
    assert!(pack_layered(&wrong_rank)
        .unwrap_err()
        .to_string()
        .contains("expected latents"));
}

// ---- against tests/fixtures/reference/latents.safetensors (generate.py, record_packing) ----

fn reference() -> std::collections::HashMap<String, Tensor> {
    ts::load_reference("latents.safetensors")
}

#[test]
fn packing_matches_the_fixtures_exactly() {
    let r = reference();
    let packed = pack_layered(&r["layered/unpacked"]).unwrap();
    let d1 = ts::max_abs_diff(&packed, &r["layered/packed"]);
    // The reference unpack returns (B, C, frames, h, w); ours (B, frames, C, h, w).
    let unpacked = unpack_layered(&r["layered/packed"], 3, 4, 6)
        .unwrap()
        .permute((0, 2, 1, 3, 4))
        .unwrap();
    let d2 = ts::max_abs_diff(&unpacked, &r["layered/unpacked_bcfhw"]);
    let d3 = ts::max_abs_diff(&pack(&r["edit/unpacked"]).unwrap(), &r["edit/packed"]);
    let d4 = ts::max_abs_diff(&unpack(&r["edit/packed"], 4, 6).unwrap(), &r["edit/unpacked_back"]);
    println!("pack/unpack max abs err: layered {d1:e} / {d2:e}, edit {d3:e} / {d4:e}");
    assert_eq!([d1, d2, d3, d4], [0.0; 4]);
}
