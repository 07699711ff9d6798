# iotgw firmware entry point: runs after boot.py on a board; on the unix port
#   IOTGW_CONFIG=config.json micropython main.py     (or: micropython main.py config.json)
import app

app.run()
