require("http").createServer((q,s)=>s.end("api")).listen(process.env.PORT)
