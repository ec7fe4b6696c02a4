//! The public API's length checks, errors and block views.

use gguf::{GgmlType, ALL_TYPES};
use quant::formats::{cast_blocks, Block};
use quant::{
    can_dequantize, can_quantize, dequantize, dequantize_to_vec, quantize, quantize_to_vec,
    supported_types, BlockQ4_K, BlockQ8_1, BlockQ8_K, Operation, QuantError,
};

#[test]
fn supported_set_is_the_seventeen_types() {
    use GgmlType::*;
    let want = [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
        IQ4_NL, IQ4_XS,
    ];
    for &ty in ALL_TYPES {
        assert_eq!(can_dequantize(ty), want.contains(&ty), "{ty}");
        assert_eq!(can_quantize(ty), want.contains(&ty), "{ty}");
    }
    assert_eq!(supported_types().len(), want.len());
}

#[test]
fn unsupported_types_are_refused() {
    let mut out = [0.0f32; 256];
    let err = dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut out).unwrap_err();
    assert_eq!(
        err,
        QuantError::Unsupported {
            ty: GgmlType::IQ2_XXS,
            op: Operation::Dequantize
        }
    );
    assert_eq!(
        err.to_string(),
        "dequantization of IQ2_XXS is not supported"
    );
    let err = quantize(GgmlType::I32, &[0.0], &mut [0; 4]).unwrap_err();
    assert!(matches!(
        err,
        QuantError::Unsupported {
            op: Operation::Quantize,
            ..
        }
    ));
    assert!(dequantize_to_vec(GgmlType::TQ1_0, &[0; 54]).is_err());
}

#[test]
fn bad_lengths_are_errors_and_leave_dst_alone() {
    let mut out = [7.0f32; 32];
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0; 17], &mut out[..31]),
        Err(QuantError::PartialBlockBytes {
            ty: GgmlType::Q4_0,
            len: 17,
            type_size: 18
        })
    );
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0; 18], &mut out[..31]),
        Err(QuantError::DstLength {
            ty: GgmlType::Q4_0,
            expected: 32,
            actual: 31,
            unit: "elements"
        })
    );
    assert!(out.iter().all(|&v| v == 7.0));
    assert!(dequantize(GgmlType::F32, &[0; 7], &mut [0.0]).is_err());
    assert!(dequantize_to_vec(GgmlType::Q6_K, &[0; 211]).is_err());

    let x = [1.0f32; 256];
    assert_eq!(
        quantize(GgmlType::Q4_K, &x[..255], &mut [0; 144]),
        Err(QuantError::PartialBlockElems {
            ty: GgmlType::Q4_K,
            len: 255,
            block_size: 256
        })
    );
    let mut bytes = [9u8; 145];
    assert_eq!(
        quantize(GgmlType::Q4_K, &x, &mut bytes),
        Err(QuantError::DstLength {
            ty: GgmlType::Q4_K,
            expected: 144,
            actual: 145,
            unit: "bytes"
        })
    );
    assert!(bytes.iter().all(|&b| b == 9));
    assert!(quantize_to_vec(GgmlType::Q8_0, &x[..33]).is_err());
}

#[test]
fn empty_input_is_fine() {
    for &ty in supported_types() {
        assert_eq!(dequantize_to_vec(ty, &[]).unwrap(), Vec::<f32>::new());
        assert_eq!(quantize_to_vec(ty, &[]).unwrap(), Vec::<u8>::new());
    }
}

#[test]
fn lengths_follow_bytes_for() {
    for &ty in supported_types() {
        let n = 2 * 256;
        let q = quantize_to_vec(ty, &vec![0.5; n]).unwrap();
        assert_eq!(Some(q.len() as u64), ty.bytes_for(n as u64), "{ty}");
        assert_eq!(dequantize_to_vec(ty, &q).unwrap().len(), n, "{ty}");
    }
}

#[test]
fn blocks_can_be_viewed_in_place() {
    let x: Vec<f32> = (0..512)
        .map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0)
        .collect();
    let bytes = quantize_to_vec(GgmlType::Q4_K, &x).unwrap();
    // A Vec<u8> is only guaranteed byte alignment; copy into u16 storage to get 2.
    let mut aligned = vec![0u16; bytes.len() / 2];
    bytemuck::cast_slice_mut::<u16, u8>(&mut aligned).copy_from_slice(&bytes);
    let blocks: &[BlockQ4_K] = cast_blocks(bytemuck::cast_slice(&aligned)).unwrap();
    assert_eq!(blocks.len(), 2);
    let mut y = [0.0f32; 256];
    blocks[1].dequantize(&mut y);
    assert_eq!(
        &y[..],
        &dequantize_to_vec(GgmlType::Q4_K, &bytes).unwrap()[256..]
    );
    assert_eq!(BlockQ4_K::ELEMS, 256);
    assert!(cast_blocks::<BlockQ4_K>(&bytes[..143]).is_none());
}

#[test]
fn q8_k_fills_bsums() {
    let x: [f32; 256] = std::array::from_fn(|i| ((i * 7919) % 255) as f32 - 127.3);
    let b = BlockQ8_K::quantize(&x);
    for (j, &s) in b.bsums.iter().enumerate() {
        let sum: i32 = b.qs[16 * j..16 * j + 16]
            .iter()
            .map(|&q| i32::from(q))
            .sum();
        assert_eq!(i32::from(s), sum, "group {j}");
    }
    assert!(b.qs.iter().all(|&q| q != i8::MIN));
    let bytes = quantize_to_vec(GgmlType::Q8_K, &x).unwrap();
    assert_eq!(bytes, bytemuck::bytes_of(&b));
}

#[test]
fn q8_1_sum_is_d_times_level_sum() {
    let x: [f32; 32] = std::array::from_fn(|i| (i as f32 - 10.0) * 0.3);
    let b = BlockQ8_1::quantize(&x);
    let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
    let want = b.d.to_f32() * sum as f32;
    assert!(
        (b.s.to_f32() - want).abs() <= want.abs() * 1e-3,
        "{} vs {want}",
        b.s
    );
}
