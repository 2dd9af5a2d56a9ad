p='wgsl-shaders/mul_mat_vec_q_acc.tmpl'
s=open(p).read()
old='''        var w: array<u32, WB_WORDS>;
        for (var i = 0u; i < WB_WORDS; i++) {
            w[i] = SRC0[first + i];
        }
        let head = wb_word(&w, 0u, odd);
        let d = unpack2x16float(head)[0];
#if defined(MUL_ACC_Q4_1)'''
new='''#if defined(MUL_ACC_Q4_0)
        let w0 = SRC0[first];
        let w1 = SRC0[first + 1u];
        let w2 = SRC0[first + 2u];
        let w3 = SRC0[first + 3u];
        let w4 = SRC0[first + 4u];
        let d = unpack2x16float(select(w0, w0 >> 16u, odd))[0];
        let q0 = select((w0 >> 16u) | (w1 << 16u), w1, odd);
        let q1 = select((w1 >> 16u) | (w2 << 16u), w2, odd);
        let q2 = select((w2 >> 16u) | (w3 << 16u), w3, odd);
        let q3 = select((w3 >> 16u) | (w4 << 16u), w4, odd);
        for (var col = 0u; col < NUM_COLS; col += 1) {
            let src1q_idx = src1q_idx_base + col * (params.k / Q8_BLOCK_SIZE) + block;
            let isum = dot4I8Packed(q0 & 0x0F0F0F0Fu, src1q[src1q_idx].qs[0]) + dot4I8Packed((q0 >> 4u) & 0x0F0F0F0Fu, src1q[src1q_idx].qs[4])
                     + dot4I8Packed(q1 & 0x0F0F0F0Fu, src1q[src1q_idx].qs[1]) + dot4I8Packed((q1 >> 4u) & 0x0F0F0F0Fu, src1q[src1q_idx].qs[5])
                     + dot4I8Packed(q2 & 0x0F0F0F0Fu, src1q[src1q_idx].qs[2]) + dot4I8Packed((q2 >> 4u) & 0x0F0F0F0Fu, src1q[src1q_idx].qs[6])
                     + dot4I8Packed(q3 & 0x0F0F0F0Fu, src1q[src1q_idx].qs[3]) + dot4I8Packed((q3 >> 4u) & 0x0F0F0F0Fu, src1q[src1q_idx].qs[7]);
            let b_ds = repack_b_dm(src1q_idx);
            sums[col] += f32(isum) * (d * b_ds.x) - 8.0 * d * b_ds.y;
        }
#else
        var w: array<u32, WB_WORDS>;
        for (var i = 0u; i < WB_WORDS; i++) {
            w[i] = SRC0[first + i];
        }
        let head = wb_word(&w, 0u, odd);
        let d = unpack2x16float(head)[0];
#if defined(MUL_ACC_Q4_1)'''
assert s.count(old)==1; s=s.replace(old,new)
old='''#else
            sums[col] += f32(isum) * (d * b_ds);
#endif
        }
    }
'''
new='''#else
            sums[col] += f32(isum) * (d * b_ds);
#endif
        }
#endif
    }
'''
assert s.count(old)==1; s=s.replace(old,new)
open(p,'w').write(s)
