-- The smallest useful pipeline: two stages, an input with a default, a command.
return {
  name = "Hello",
  description = "Greets, then lists the workspace",
  requires = {"process", "filesystem"},
  inputs = {
    who = {type = "string", description = "Who to greet", default = "world"},
  },
  stages = {
    {
      name = "greet",
      script = function()
        log.info("hello, " .. env.get("who"))
        filesystem.write("greeting.txt", "hello, " .. env.get("who") .. "\n")
      end,
    },
    {
      name = "show",
      script = function()
        local out = process.run({command = "cat", args = {"greeting.txt"}})
        env.set("greeting", out.stdout)
        print("wrote " .. #out.stdout .. " bytes")
      end,
    },
  },
}
