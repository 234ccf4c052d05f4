# Argument checks shared by the Cython entry points (``from minissl_checks cimport ...``).
#
# Typed memoryviews are the house style (im2col, pool). The entry points of softmax, norm,
# activation, embedding and optim instead take ndarrays and read their data pointers through
# NumPy's C API, for a measured reason: acquiring a typed memoryview costs about a microsecond
# per argument (measured when these kernels were written), most of the time of a small call
# such as an optimizer step on a bias vector or a layer norm of a few rows. The public functions
# (minissl/kernels/<family>/__init__.py) have validated and converted every argument already;
# these checks (nanoseconds) only make sure that a wrong direct call raises instead of
# reading out of bounds. ``kernel`` names the module in the messages: "softmax" for
# minissl.kernels.softmax._cpu. The functions are inline, compiled into each module that uses
# them, so no shared module has to be built or imported.
cimport numpy as cnp


cdef inline int float_type(str kernel, object a) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64, the type of the float ndarray ``a``."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl.kernels.{kernel}._cpu: expected an ndarray, got "
                        f"{type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"minissl.kernels.{kernel}._cpu: expected float32 or float64, got "
                        f"{a.dtype}")
    return t


cdef inline void* array_data(str kernel, object a, int typenum, int ndim, Py_ssize_t d0,
                             Py_ssize_t d1, Py_ssize_t d2, bint writable) except NULL:
    """Data pointer of ``a``: a C-contiguous ndarray of type ``typenum`` and shape (d0,),
    (d0, d1) or (d0, d1, d2) as ``ndim`` says (the unused sizes are ignored), writeable if
    asked."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl.kernels.{kernel}._cpu: expected an ndarray, got "
                        f"{type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim or dims[0] != d0
            or (ndim > 1 and dims[1] != d1) or (ndim > 2 and dims[2] != d2)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(f"minissl.kernels.{kernel}._cpu: got a {a.dtype} array of shape "
                         f"{a.shape}, "
                         "not the C-contiguous array the kernel needs (call the functions of "
                         f"minissl.kernels.{kernel}, which check and convert their arguments)")
    return cnp.PyArray_DATA(arr)
