/* Test support only, never shipped: holds the file named on its command line open the way
 * many Windows programs do (sharing reading and writing, not deletion), says "held", and lets
 * go when its standard input ends. tests/it/cross.rs uses it to check that a users file
 * replaced while another program holds it fails cleanly and loses nothing. */
#include <windows.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv)
{
    char buf[64];
    HANDLE h;
    if (argc != 2)
        return 2;
    h = CreateFileW(argv[1], GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE, NULL,
                    OPEN_EXISTING, 0, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        printf("cannot open: error %lu\n", GetLastError());
        return 1;
    }
    printf("held\n");
    fflush(stdout);
    while (fread(buf, 1, sizeof buf, stdin) > 0) {
    }
    CloseHandle(h);
    return 0;
}
