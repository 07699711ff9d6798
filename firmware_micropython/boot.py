# iotgw firmware: runs first at every board reset; keep it tiny (main.py does the work).
import gc

try:
    import esp

    esp.osdebug(None)  # ESP32: no vendor debug output on the REPL UART
except ImportError:
    pass

gc.collect()
