// cuBLAS on the host for the emulation build (include/cublas_v2.h): column-major GEMMs through
// OpenBLAS. cublasGemmEx widens 16-bit operands to fp32 (exact), multiplies in fp32, and rounds
// the result to C's type to nearest even. Argument checks follow cuBLAS's documented
// CUBLAS_STATUS_INVALID_VALUE conditions.
#include <cblas.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/emulation/include/cublas_v2.h"
#include "kernels/cuda/emulation/include/cuda_bf16.h"
#include "kernels/cuda/emulation/include/cuda_fp16.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; }

// cuBLAS's shape rules: sizes non-negative, each leading dimension at least its stored rows.
bool valid_shape(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb,
                 int ldc) {
  if (!valid_op(ta) || !valid_op(tb) || m < 0 || n < 0 || k < 0) return false;
  const int a_rows = ta == CUBLAS_OP_N ? m : k;
  const int b_rows = tb == CUBLAS_OP_N ? k : n;
  return lda >= (a_rows > 1 ? a_rows : 1) && ldb >= (b_rows > 1 ? b_rows : 1) &&
         ldc >= (m > 1 ? m : 1);
}

float load(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_32F:
      return static_cast<const float*>(p)[i];
  }
  return 0.0f;
}
void store(void* p, cudaDataType_t t, int64_t i, float v) {
  switch (t) {
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      return;
    case CUDA_R_16F:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      return;
    case CUDA_R_32F:
      static_cast<float*>(p)[i] = v;
      return;
  }
}
bool valid_type(cudaDataType_t t) { return t == CUDA_R_16BF || t == CUDA_R_16F || t == CUDA_R_32F; }

// A stored column-major matrix of `rows` x `cols` with leading dimension ld, widened to a packed
// fp32 copy (leading dimension rows).
std::vector<float> widen(const void* p, cudaDataType_t t, int rows, int cols, int ld) {
  std::vector<float> out(static_cast<size_t>(rows) * cols);
  for (int j = 0; j < cols; ++j) {
    for (int i = 0; i < rows; ++i)
      out[static_cast<size_t>(j) * rows + i] = load(p, t, static_cast<int64_t>(j) * ld + i);
  }
  return out;
}

CBLAS_TRANSPOSE cblas_op(cublasOperation_t op) {
  return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext{};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* a, int lda, const float* b, int ldb, const float* beta,
                           float* c, int ldc) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!valid_shape(transa, transb, m, n, k, lda, ldb, ldc) || alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  cblas_sgemm(CblasColMajor, cblas_op(transa), cblas_op(transb), m, n, k, *alpha, a, lda, b, ldb,
              *beta, c, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!valid_shape(transa, transb, m, n, k, lda, ldb, ldc) || alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (!valid_type(a_type) || !valid_type(b_type) || !valid_type(c_type) ||
      compute != CUBLAS_COMPUTE_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const float alpha32 = *static_cast<const float*>(alpha);
  const float beta32 = *static_cast<const float*>(beta);
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  const std::vector<float> a32 = widen(a, a_type, a_rows, a_cols, lda);
  const std::vector<float> b32 = widen(b, b_type, b_rows, b_cols, ldb);
  std::vector<float> c32 = beta32 == 0.0f ? std::vector<float>(static_cast<size_t>(m) * n, 0.0f)
                                          : widen(c, c_type, m, n, ldc);
  cblas_sgemm(CblasColMajor, cblas_op(transa), cblas_op(transb), m, n, k, alpha32, a32.data(),
              a_rows > 0 ? a_rows : 1, b32.data(), b_rows > 0 ? b_rows : 1, beta32, c32.data(), m);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i)
      store(c, c_type, static_cast<int64_t>(j) * ldc + i, c32[static_cast<size_t>(j) * m + i]);
  }
  return CUBLAS_STATUS_SUCCESS;
}
