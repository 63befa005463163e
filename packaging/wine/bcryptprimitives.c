/* Test support only, never shipped: Wine 8 has no bcryptprimitives.dll, whose ProcessPrng
 * current Rust standard libraries call for random bytes on Windows. This stand-in answers it
 * with RtlGenRandom (advapi32's SystemFunction036), which Wine has. Real Windows (10 and
 * later) has the DLL; packaging/test-cross builds this one into its own Wine prefix only. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
