build-cs/obj/proxy/routes.o: proxy/routes.c proxy/routes.h conf/conf.h
proxy/routes.h:
conf/conf.h:
